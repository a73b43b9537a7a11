"""Wire formats spoken to Go plugins (hashicorp/go-plugin): yamux, encoding/gob and net/rpc."""
