# shellcheck shell=bash
# Installing what scripts/test and scripts/bench need from Debian's
# packages, sourced by both:
#   need CMD PACKAGE [PATH]  queue PACKAGE when CMD is not on PATH (and no
#                            executable PATH exists)
#   install_needed [REGEX]   install the queued packages; with REGEX, those
#                            matching it may fail to install (the others
#                            are then installed without them)

need_apt=()

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [ -n "${3:-}" ] && [ -x "$3" ] && return 0
  need_apt+=("$2")
}

install_needed() {
  [ ${#need_apt[@]} -gt 0 ] || return 0
  echo "installing ${need_apt[*]} from Debian's packages"
  local sudo=
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  if [ -n "${1:-}" ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null ||
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${need_apt[@]}" | grep -v "$1") >/dev/null
  else
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
  # the packages start their own daemons; the scripts start private ones
  local svc
  for svc in redis-server nginx; do
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
}
