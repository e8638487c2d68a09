#!/usr/bin/env bash
# A browser for the page test (tests/test_page.py) and tools/screenshot_page.py:
# - the system's chromium already there (MMENTAIL_CHROMIUM, default /usr/bin/chromium):
#   nothing to do;
# - else, where apt-get works (root, or sudo without a password) and has a `chromium`
#   package (Debian's): that package;
# - else Playwright's own Chromium, downloaded by `playwright install` (with its system
#   libraries through apt where apt works, as on Ubuntu, whose chromium is a snap).
# Run it in the project's environment (Playwright comes with the `test` extra).
set -euo pipefail

chromium="${MMENTAIL_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
  echo "browser: $chromium"
  exit 0
fi

as_root=()
apt_works=false
if command -v apt-get >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    apt_works=true
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    apt_works=true
    as_root=(sudo -n)
  fi
fi

if $apt_works; then
  "${as_root[@]}" apt-get update -qq
  if [ -n "$(apt-cache show --no-all-versions chromium 2>/dev/null)" ]; then
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends chromium
    if "$chromium" --version; then
      exit 0
    fi
    echo "apt's chromium does not run here; installing Playwright's own" >&2
  fi
  "${as_root[@]}" "$(command -v python)" -m playwright install-deps chromium
fi
python -m playwright install chromium
echo "browser: Playwright's own Chromium"
