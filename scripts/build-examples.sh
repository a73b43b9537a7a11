#!/usr/bin/env bash
# Build the example wasm plugins from source.
#
#   scripts/build-examples.sh           rebuild examples/plugins/*/<name>.wasm
#   scripts/build-examples.sh --check   rebuild into a temp dir and fail if the
#                                       committed .wasm differs from the source
#
# The built modules are committed, so users of the examples need no toolchain;
# run this only after changing an example's C source.
#
# Needs clang with the wasm32-wasi target, wasi-libc and lld. On Debian/Ubuntu:
#   apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
# Set CLANG=/path/to/clang to use another compiler (e.g. one from wasi-sdk).
#
# The output is reproducible: the same source and toolchain give the same
# bytes (no debug info, names or producers section; no timestamps or paths).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLANG="${CLANG:-clang}"

# C plugins to build: each is examples/plugins/<name>/<name>.c -> <name>.wasm.
PLUGINS=(counter)

# Flags, and why:
#   --target=wasm32-wasi -mexec-model=reactor
#       a WASI reactor: links crt1-reactor.o, which exports _initialize (run
#       once by the host to set up libc) instead of a _start/main command.
#   -O2                  optimise; no -g, so no debug sections.
#   -Wl,--strip-all      drop the name and producers custom sections, which
#                        would otherwise embed symbol names and tool versions.
#   -lc-printscan-no-floating-point
#                        wasi-libc's printf without float support (the
#                        examples print integers only): about 5 KB smaller.
CFLAGS=(
    --target=wasm32-wasi -mexec-model=reactor
    -O2 -std=c11 -Wall -Wextra -Werror
    -Wl,--strip-all
)
LIBS=(-lc-printscan-no-floating-point)

missing_toolchain() {
    {
        echo "error: $1"
        echo "Building the example plugins needs clang with the wasm32-wasi target,"
        echo "wasi-libc and lld. On Debian/Ubuntu:"
        echo "    apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32"
        echo "(or point CLANG at a wasi-sdk clang). The committed .wasm files work"
        echo "without any of this; you only need it to change an example's source."
    } >&2
    exit 1
}

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

command -v "$CLANG" >/dev/null 2>&1 || missing_toolchain "'$CLANG' not found"

# Compile and link a trivial reactor: this checks the target, wasi-libc,
# the wasm32 compiler-rt builtins and wasm-ld in one go.
printf 'int probe(void) { return 0; }\n' >"$TMP/probe.c"
if ! "$CLANG" "${CFLAGS[@]}" -o "$TMP/probe.wasm" "$TMP/probe.c" "${LIBS[@]}" \
        >"$TMP/probe.log" 2>&1; then
    sed 's/^/    /' "$TMP/probe.log" >&2
    missing_toolchain "'$CLANG' cannot build for wasm32-wasi"
fi

status=0
for name in "${PLUGINS[@]}"; do
    dir="$ROOT/examples/plugins/$name"
    src="$dir/$name.c"
    out="$dir/$name.wasm"
    [[ -f "$src" ]] || { echo "error: $src not found" >&2; exit 1; }
    # Compile from inside the plugin directory with a relative source path,
    # so nothing about where the checkout lives can reach the output.
    (cd "$dir" && "$CLANG" "${CFLAGS[@]}" -o "$TMP/$name.wasm" "$name.c" "${LIBS[@]}")
    size=$(wc -c <"$TMP/$name.wasm" | tr -d ' ')
    sum=$(sha256sum "$TMP/$name.wasm" | cut -d' ' -f1)
    if [[ $check -eq 1 ]]; then
        if cmp -s "$TMP/$name.wasm" "$out"; then
            echo "ok       examples/plugins/$name/$name.wasm  ($size bytes, sha256 $sum)"
        else
            echo "STALE    examples/plugins/$name/$name.wasm does not match $name.c" >&2
            status=1
        fi
    else
        # Build into the temp dir and move into place, so a failed build never
        # leaves a truncated module behind.
        mv -f "$TMP/$name.wasm" "$out"
        chmod 0644 "$out"
        echo "built    examples/plugins/$name/$name.wasm  ($size bytes, sha256 $sum)"
    fi
done
exit $status
