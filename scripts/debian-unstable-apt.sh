# Sourced by scripts that need packages newer than this machine's Debian release (the newest
# linux-source): `unstable_apt DIR` makes a private apt configuration for Debian unstable (sid)
# and experimental under DIR, reads their package lists, and leaves in the array UNSTABLE_APT
# the options that make apt-get and apt-cache use it. The system's apt setup is not touched.
unstable_apt() {
  local dir=$1
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
  cat >"$dir/sources.list" <<'SRC'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian experimental main
SRC
  UNSTABLE_APT=(-o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
                -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
                -o Dir::State::status=/var/lib/dpkg/status -o Debug::NoLocking=1)
  apt-get "${UNSTABLE_APT[@]}" update >"$dir/update.log" 2>&1
}
