#!/usr/bin/env bash
# Encode and training rows of an older BabelCLIP and of this checkout, run alternately in one session:
#   bash bench/before_after.sh COMMIT [ROUNDS]   (then python bench/report.py)
# Writes bench/results/{encode,training}-{before,after}N.json. The older commit is checked out into a
# temporary git worktree; each side runs from a folder where `babelclip` points at its own tree, with the
# venv of tools/test.sh or bench/run.sh. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
commit=${1:?usage: bench/before_after.sh COMMIT [ROUNDS]}
rounds=${2:-2}
py=${PYTHON:-.venv/bin/python}
python=$(cd "$(dirname "$py")" && pwd)/$(basename "$py")  # absolute, the venv's own (not its symlink target)
here=$(pwd)
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/before" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add --detach "$tmp/before" "$commit" >/dev/null
mkdir -p "$tmp/path-before" "$tmp/path-after"
ln -s "$tmp/before" "$tmp/path-before/babelclip"
ln -s "$here" "$tmp/path-after/babelclip"
for round in $(seq 1 "$rounds"); do
  for side in before after; do
    tree=$here; [ "$side" = before ] && tree=$tmp/before
    (cd "$tree" && PYTHONPATH="$tmp/path-$side" "$python" bench/run.py --quick --only encode training \
        --tag "$side$round")
    [ "$side" = before ] && cp "$tmp/before/bench/results/"{encode,training}-"before$round.json" bench/results/
  done
done
after=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo "+changes")
printf '{"before": "%s", "after": "%s", "rounds": %s}\n' "$(git rev-parse --short "$commit")" "$after" "$rounds" \
  > bench/results/before-after.json
echo "wrote bench/results/{encode,training}-{before,after}{1..$rounds}.json and before-after.json"
