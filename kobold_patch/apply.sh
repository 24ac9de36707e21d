#!/usr/bin/env bash
# Get KoboldCPP at the pinned tag into DIR and apply the Halo Weave patch, idempotently.
#
#   kobold_patch/apply.sh DIR
#
# The patch is two parts: the files of its own (src/: attention_export.h, attention_export.cpp and
# the Python package halo_api/), copied to the tree's top level, and the hooks into KoboldCPP's existing files
# (halo-weave-koboldcpp-v1.76.patch). Both are applied as one unified diff, built here from the two,
# so that applying, recognising an applied tree, swapping an older Halo Weave for this one and
# refusing a tree that does not fit are all one `git apply` decision each.
#
# Where the tree comes from, when DIR does not exist yet:
#   KOBOLDCPP_SRC=PATH   copy an existing KoboldCPP tree (e.g. offline); PATH is not modified
#   otherwise            git clone --depth 1 --branch $KOBOLDCPP_TAG $KOBOLDCPP_GIT
# Running it twice is fine: an already patched tree is left as it is. A tree of another
# KoboldCPP version, or one the patch does not fit, is refused with the reason.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOOKS="$HERE/halo-weave-koboldcpp-v1.76.patch"
NEW_FILES=(halo_capture.h halo_capture.cpp attention_export.h attention_export.cpp)
# the halo_api package, every module of it (koboldcpp.py imports it from the tree's top level)
while IFS= read -r f; do NEW_FILES+=("$f"); done < <(cd "$HERE/src" && find halo_api -name '*.py' -type f | LC_ALL=C sort)
TAG="${KOBOLDCPP_TAG:-v1.76}"
GIT_URL="${KOBOLDCPP_GIT:-https://github.com/LostRuins/koboldcpp.git}"
VERSION="${TAG#v}"

say() { printf '\033[1m[halo-weave]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[halo-weave] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR"
DIR="$1"
command -v git >/dev/null || die "git is needed (apt-get install git)"
[ -f "$HOOKS" ] || die "missing $HOOKS"
[ -f "$HERE/src/halo_api/__init__.py" ] || die "missing $HERE/src/halo_api/__init__.py"
for f in "${NEW_FILES[@]}"; do [ -f "$HERE/src/$f" ] || die "missing $HERE/src/$f"; done

# The whole patch: the hooks, then each new file as a "new file" diff (git diff --no-index
# exits 1 when the files differ, which they always do here).
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PATCH="$WORK/halo-weave.patch"
cp "$HOOKS" "$PATCH"
for f in "${NEW_FILES[@]}"; do
    status=0
    (cd "$HERE/src" && git diff --no-index --no-color --no-ext-diff --src-prefix=a/ --dst-prefix=b/ /dev/null "$f") >> "$PATCH" || status=$?
    [ "$status" -eq 1 ] || die "could not turn src/$f into a diff (git diff --no-index exited $status)"
done

if [ ! -d "$DIR" ]; then
    mkdir -p "$(dirname "$DIR")"
    rm -rf "$DIR.tmp"  # what an interrupted earlier run left
    if [ -n "${KOBOLDCPP_SRC:-}" ]; then
        [ -f "$KOBOLDCPP_SRC/koboldcpp.py" ] || die "KOBOLDCPP_SRC=$KOBOLDCPP_SRC is not a KoboldCPP tree (no koboldcpp.py)"
        say "copying KoboldCPP from $KOBOLDCPP_SRC to $DIR (build outputs and .git left behind)"
        mkdir -p "$DIR.tmp"
        tar -C "$KOBOLDCPP_SRC" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.dll.a' -cf - . | tar -C "$DIR.tmp" -xf -
        mv "$DIR.tmp" "$DIR"
    else
        say "cloning KoboldCPP $TAG from $GIT_URL into $DIR"
        git clone --depth 1 --branch "$TAG" "$GIT_URL" "$DIR.tmp" \
            || die "could not clone $GIT_URL at $TAG: check the network, or pass KOBOLDCPP_SRC=DIR of a KoboldCPP $TAG tree"
        mv "$DIR.tmp" "$DIR"
    fi
fi

[ -f "$DIR/koboldcpp.py" ] || die "$DIR is not a KoboldCPP tree (no koboldcpp.py); remove it or point KOBOLDCPP_DIR elsewhere"
found="$(sed -n 's/^KcppVersion = "\(.*\)"/\1/p' "$DIR/koboldcpp.py" | head -1)"
[ "$found" = "$VERSION" ] || die "$DIR is KoboldCPP ${found:-(unknown version)}, the patch is for $VERSION only; use a $TAG tree (make kobold-clean, then KOBOLDCPP_SRC=... or the default clone)"

# git apply relative to DIR even when DIR lies inside another git work tree (e.g. build/ here)
abs_dir="$(cd "$DIR" && pwd)"
export GIT_CEILING_DIRECTORIES="$(dirname "$abs_dir")"
cd "$abs_dir"
# the tree keeps a copy of the patch it carries, so that a newer Halo Weave can swap its own in
# (and the build stays incremental) instead of asking for a fresh tree
APPLIED=.halo-weave-applied.patch
# Swapping patches rewrites every file either touches; a file that ends as it was gets its old
# time back, so that make rebuilds only what changed (a new halo_api module alone rebuilds nothing)
save_times() {
    { git apply --numstat "$APPLIED"; git apply --numstat "$PATCH"; } | cut -f3 | sort -u | while read -r f; do
        if [ -f "$f" ]; then mkdir -p "$WORK/before/$(dirname "$f")" && cp -p "$f" "$WORK/before/$f"; fi
    done
}
restore_times() {
    [ -d "$WORK/before" ] || return 0
    (cd "$WORK/before" && find . -type f) | while read -r f; do
        if cmp -s "$f" "$WORK/before/$f"; then touch -r "$WORK/before/$f" "$f"; fi
    done
}
if git apply --reverse --check "$PATCH" 2>/dev/null; then
    say "patch already applied to $DIR"
    cmp -s "$PATCH" "$APPLIED" || cp "$PATCH" "$APPLIED"  # (touch nothing that needs no change)
elif [ -f "$APPLIED" ] && git apply --reverse --check "$APPLIED" 2>/dev/null; then
    save_times
    git apply --reverse "$APPLIED"
    if ! git apply --check "$PATCH" 2>/dev/null; then
        git apply "$APPLIED"  # leave the tree as it was
        restore_times
        git apply --check "$PATCH" || true
        die "$DIR carries an older Halo Weave patch and this one does not fit the tree under it; start from a clean $TAG tree (make kobold-clean)"
    fi
    git apply "$PATCH"
    restore_times
    cp "$PATCH" "$APPLIED"
    say "the older Halo Weave patch in $DIR was replaced by this one"
elif git apply --check "$PATCH" 2>/dev/null; then
    git apply "$PATCH"
    cp "$PATCH" "$APPLIED"
    say "patch applied to $DIR"
else
    git apply --check "$PATCH" || true
    die "the patch does not apply to $DIR (a modified KoboldCPP $VERSION tree?); start from a clean $TAG tree (make kobold-clean)"
fi
