#!/usr/bin/env bash
# One entry point that sets up a fresh machine and then runs the main job or the tests.
#   scripts/dht.sh run [dht-fast args...]   default: the half-moons teaching run
#   scripts/dht.sh test [pytest args...]    the whole test suite
#   scripts/dht.sh setup                    only create .venv and install the package
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${DHT_FAST_VENV:-$root/.venv}"
py="$venv/bin/python"

setup() {
  if [ ! -x "$py" ]; then
    python3 -m venv "$venv"
  fi
  if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
    # The CUDA 13.0 build from the wheels on disk; it runs on the CPU too.
    "$py" -m pip install -q torch==2.14.1 torchvision==0.29.1
  fi
  local stamp="$venv/.dht_fast_installed"
  local built=1
  # A clean of the working tree removes the compiled extension but not the stamp.
  if [ "${DHT_FAST_BUILD_CPP:-auto}" != "0" ] && ! compgen -G "dht_fast/_C.*.so" >/dev/null; then
    built=0
  fi
  if [ ! -f "$stamp" ] || [ "$built" = 0 ] \
      || [ -n "$(find setup.py pyproject.toml csrc -newer "$stamp" 2>/dev/null)" ]; then
    "$py" -m pip install -q numpy pybind11 pytest pytest-benchmark matplotlib tqdm \
      scikit-learn hypothesis opacus einops unfoldNd
    # BackPACK pins an old torchvision; without its dependencies it runs on ours.
    "$py" -m pip install -q --no-deps backpack-for-pytorch
    "$py" -m pip install -q --no-build-isolation -e .
    touch "$stamp"
  fi
}

cmd="${1:-run}"
shift || true
case "$cmd" in
  setup) setup ;;
  run) setup; if [ $# -eq 0 ]; then set -- demo; fi; exec "$venv/bin/dht-fast" "$@" ;;
  test) setup; exec "$py" -m pytest -q "$@" ;;
  *) echo "usage: scripts/dht.sh {run|test|setup} [args...]" >&2; exit 2 ;;
esac
