"""Runtimes: each turns a `PluginSource` into a running `Plugin`."""
