#!/usr/bin/env bash
# Headless Chromium for the HTML report's browser tests (Debian packages). Best effort: without it,
# the browser tests are skipped with a message, never failed.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
    || echo "install-chromium: could not install chromium; browser tests will be skipped" >&2
else
  echo "install-chromium: not root or no apt-get; browser tests will be skipped" >&2
fi
exit 0
