# Sourced by bench/fleet/run.sh: Ansible side by side on the same hosts.
#
# ansible-core from PyPI, pinned ($ANSIBLE_VERSION), in a venv cached under
# $FLEETSNAP_CACHE/venvs/ansible-core-<version>. The end state is the operator's: the files
# are captured from one host the operator installed (there is no renderer bin to call without
# touching operator/), the host name in them becomes a template variable, and the credentials
# are encrypted on each host with systemd-creds from the same secret values, as the operator
# does. Then every host is reset (timers off, fleetsnap's files removed) and Ansible pushes:
#   a0: Ansible's defaults (forks 5, linear, facts gathered, no pipelining, ControlPersist 60s)
#   a1: tuned (forks 50, pipelining, ControlPersist 300s, gather_facts off, strategy free,
#       interpreter fixed)
# After each push the first host's end state is compared with what the operator had installed
# there (content hashes, decrypted credential hashes, modes, link, timer state).

ansible_venv() {
  local v=$CACHE/venvs/ansible-core-$ANSIBLE_VERSION
  if [ ! -e "$v/.ok" ]; then
    log "ansible: pip install ansible-core==$ANSIBLE_VERSION into $v"
    rm -rf "$v"; python3 -m venv "$v" || die "python3 -m venv failed (missing component: python3-venv)"
    "$v/bin/pip" install -q "ansible-core==$ANSIBLE_VERSION" >"$DIR/ansible-pip.log" 2>&1 || die "pip install ansible-core==$ANSIBLE_VERSION failed; log: $DIR/ansible-pip.log"
    touch "$v/.ok"
  fi
  ANSIBLE_VENV=$v
}

# The end-state fingerprint of one host: what must be equal after either tool.
FINGERPRINT='cd / 2>/dev/null
for f in /etc/fleetsnap/*.json /etc/systemd/system/fleetsnap-*.service /etc/systemd/system/fleetsnap-*.timer /usr/local/lib/fleetsnap/*/fleetsnap; do
  [ -f "$f" ] && echo "file $(stat -c "%a %U" "$f") $(sha256sum < "$f" | cut -c1-16) $f"; done
for f in /etc/fleetsnap/credstore.encrypted/*; do
  [ -f "$f" ] && echo "cred $(stat -c "%a %U" "$f") $(systemd-creds decrypt --name="${f##*.}" "$f" - 2>/dev/null | sha256sum | cut -c1-16) $f"; done
for d in /usr/local/lib/fleetsnap /etc/fleetsnap /etc/fleetsnap/credstore.encrypted /var/lib/fleetsnap /var/lib/fleetsnap/runs /var/cache/fleetsnap; do
  [ -d "$d" ] && echo "dir $(stat -c "%a %U" "$d") $d"; done
for d in /var/lib/fleetsnap/runs/*/; do [ -d "$d" ] && echo "dir $(stat -c "%a %U" "$d") $d"; done
echo "link $(readlink /usr/local/bin/fleetsnap)"
for u in /etc/systemd/system/fleetsnap-*.timer; do [ -f "$u" ] && echo "timer $(basename "$u") $(systemctl is-enabled "$(basename "$u")") $(systemctl is-active "$(basename "$u")")"; done'

RESET='for u in /etc/systemd/system/fleetsnap-*.timer; do [ -f "$u" ] && systemctl disable --now "$(basename "$u")" >/dev/null 2>&1; done
for u in /etc/systemd/system/fleetsnap-*.service; do [ -f "$u" ] && systemctl stop "$(basename "$u")" >/dev/null 2>&1; done
rm -rf /usr/local/lib/fleetsnap /usr/local/bin/fleetsnap /etc/fleetsnap /etc/systemd/system/fleetsnap-* /var/lib/fleetsnap /var/cache/fleetsnap
systemctl daemon-reload; true'

hosts_parallel() {  # hosts_parallel SCRIPT HOSTS...: run SCRIPT on every host, 16 at a time
  local script=$1 i; shift
  for i in "$@"; do host_addr "$i"; done |
    xargs -P 16 -I{} nsenter --net="/run/netns/$FNS" ssh -F "$FDIR/ssh_config" "root@{}" "$script"
}

ansible_capture() {  # ansible_capture HOST_INDEX: the operator's files on that host as templates
  local i=$1 a=$DIR/ansible name; a=$DIR/ansible; name=$(host_name "$i")
  rm -rf "$a/captured"; mkdir -p "$a/captured" "$a/templates"
  fssh "$i" 'tar -C / -cf - etc/fleetsnap --exclude=etc/fleetsnap/credstore.encrypted --exclude=etc/fleetsnap/.staging $(cd / && ls -d etc/systemd/system/fleetsnap-*.service etc/systemd/system/fleetsnap-*.timer)' \
    | tar -C "$a/captured" -xf - || die "ansible: cannot capture the operator's files from $name"
  fssh "$i" "$FINGERPRINT" > "$a/fingerprint.fleetsnap" || die "ansible: fingerprint of $name failed"
  fssh "$i" 'ls /etc/fleetsnap/credstore.encrypted' > "$a/creds.list"
  fssh "$i" 'readlink /usr/local/bin/fleetsnap' > "$a/link"
  fssh "$i" 'find /usr/local/lib/fleetsnap /etc/fleetsnap /var/lib/fleetsnap /var/cache/fleetsnap -type d -not -path "*/.staging*" -printf "%p %m\n"' | sort > "$a/dirs"
  local f
  for f in "$a"/captured/etc/fleetsnap/*.json "$a"/captured/etc/systemd/system/fleetsnap-*; do
    sed "s/$name/{{ inventory_hostname }}/g" "$f" > "$a/templates/$(basename "$f").j2"
  done
}

ansible_files() {   # playbook, inventory and the variables the playbook reads
  local a=$DIR/ansible i k=${ANSIBLE_HOSTS:-${#UP[@]}}
  local cfg slug; cfg=$(cd "$a/captured/etc/fleetsnap" && ls ./*.json | head -1); slug=$(basename "$cfg" .json)
  ATARGETS=("${UP[@]:0:$k}")
  { echo "[fleet]"; for i in "${ATARGETS[@]}"; do echo "$(host_name "$i") ansible_host=$(host_addr "$i")"; done
    echo "[fleet:vars]"; echo "ansible_user=root"; echo "ansible_ssh_private_key_file=$IMG/id_ed25519"
    echo "ansible_ssh_extra_args='-o UserKnownHostsFile=$FDIR/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'"
  } > "$a/inventory"
  {
    echo "fleet_executor: $DIR/bin/fleetsnap"
    echo "fleet_exec_path: $(cat "$a/link")"
    echo "fleet_slug: $slug"
    echo "fleet_dirs:"; while read -r p m; do echo "  - {path: \"$p\", mode: \"0$m\"}"; done < "$a/dirs"
    echo "fleet_units:"; for f in "$a"/captured/etc/systemd/system/fleetsnap-*; do echo "  - $(basename "$f")"; done
    echo "fleet_creds:"
    while read -r c; do
      local id=${c#"$slug".} src=
      case $id in repository-password) src=$SEC/password ;; aws-access-key-id) src=$SEC/AWS_ACCESS_KEY_ID ;;
        aws-secret-access-key) src=$SEC/AWS_SECRET_ACCESS_KEY ;; *) die "ansible: unknown credential id $id in the operator's layout" ;; esac
      echo "  - {id: $id, file: \"$src\", path: /etc/fleetsnap/credstore.encrypted/$c}"
    done < "$a/creds.list"
  } > "$a/vars.yml"
  cat > "$a/push.yml" <<'YML'
# The operator's end state for one BackupPolicy, pushed by Ansible (bench/fleet/ansible.sh).
- hosts: fleet
  gather_facts: "{{ fleet_gather_facts | default(true) | bool }}"
  vars_files: [vars.yml]
  tasks:
    - name: directories
      ansible.builtin.file: {path: "{{ item.path }}", state: directory, mode: "{{ item.mode }}", owner: root, group: root}
      loop: "{{ fleet_dirs }}"
    - name: executor
      ansible.builtin.copy: {src: "{{ fleet_executor }}", dest: "{{ fleet_exec_path }}", mode: "0755", owner: root, group: root}
    - name: link
      ansible.builtin.file: {src: "{{ fleet_exec_path }}", dest: /usr/local/bin/fleetsnap, state: link, force: true}
    - name: config
      ansible.builtin.template: {src: "templates/{{ fleet_slug }}.json.j2", dest: "/etc/fleetsnap/{{ fleet_slug }}.json", mode: "0644", owner: root, group: root}
    - name: credentials (systemd-creds on the host, secret on stdin)
      ansible.builtin.shell: "umask 077 && systemd-creds encrypt --name={{ item.id }} - {{ item.path }}.tmp && mv {{ item.path }}.tmp {{ item.path }}"
      args: {stdin: "{{ lookup('file', item.file) }}", stdin_add_newline: false}
      loop: "{{ fleet_creds }}"
      no_log: true
    - name: units
      ansible.builtin.template: {src: "templates/{{ item }}.j2", dest: "/etc/systemd/system/{{ item }}", mode: "0644", owner: root, group: root}
      loop: "{{ fleet_units }}"
    - name: verify units
      ansible.builtin.command: "systemd-analyze verify {{ fleet_units | map('regex_replace', '^', '/etc/systemd/system/') | join(' ') }}"
      changed_when: false
    - name: timer enabled and started
      ansible.builtin.systemd: {name: "{{ fleet_units | select('search', 'timer$') | first }}", daemon_reload: true, enabled: true, state: started}
YML
  cat > "$a/a0.cfg" <<CFG
[defaults]
inventory = $a/inventory
forks = 5
host_key_checking = True
[ssh_connection]
control_path_dir = $a/cp0
CFG
  cat > "$a/a1.cfg" <<CFG
[defaults]
inventory = $a/inventory
forks = 50
strategy = free
host_key_checking = True
interpreter_python = /usr/bin/python3
[ssh_connection]
pipelining = True
ssh_args = -C -o ControlMaster=auto -o ControlPersist=300s
control_path_dir = $a/cp1
CFG
}

ansible_run() {   # ansible_run a0|a1
  local v=$1 a=$DIR/ansible extra=() forks rc=0 t0
  [ "$v" = a1 ] && extra=(-e fleet_gather_facts=false)
  forks=$(sed -n 's/^forks = //p' "$a/$v.cfg")
  log "ansible $v: resetting ${#ATARGETS[@]} hosts"
  hosts_parallel "$RESET" "${ATARGETS[@]}" >/dev/null 2>&1 || true
  log "ansible $v: push to ${#ATARGETS[@]} hosts (forks $forks)"
  phase "ansible-$v" start "{\"tool\": \"ansible $v\", \"forks\": $forks}"
  t0=$EPOCHREALTIME
  ( cg_enter ansible
    cd "$a" && exec nsenter --net="/run/netns/$FNS" env ANSIBLE_CONFIG="$a/$v.cfg" ANSIBLE_HOME="$a/home" \
      ANSIBLE_NOCOLOR=1 "$ANSIBLE_VENV/bin/ansible-playbook" "${extra[@]}" push.yml ) >"$DIR/ansible-$v.log" 2>&1 || rc=$?
  local wall; wall=$(fsince "$t0")
  phase "ansible-$v" end "{\"wall_s\": $wall, \"rc\": $rc, \"hosts_pushed\": ${#ATARGETS[@]}}"
  log "ansible $v: $wall s, rc $rc ($(grep -E 'ok=|failed=' "$DIR/ansible-$v.log" | grep -vc 'failed=0' || true) hosts with failures)"
  fssh "${ATARGETS[0]}" "$FINGERPRINT" > "$a/fingerprint.$v" 2>/dev/null || true
  if diff -q "$a/fingerprint.fleetsnap" "$a/fingerprint.$v" >/dev/null; then
    echo "same" > "$a/endstate.$v"
  else
    diff "$a/fingerprint.fleetsnap" "$a/fingerprint.$v" > "$a/endstate.$v" || true
    log "ansible $v: end state on $(host_name "${ATARGETS[0]}") differs from the operator's: $a/endstate.$v"
  fi
  cp "$a/endstate.$v" "$PROBE/endstate.$v"
  local active; active=$(hosts_parallel 'systemctl is-active fleetsnap-*.timer' "${ATARGETS[@]}" 2>/dev/null | grep -c '^active$' || true)
  echo "$active" > "$PROBE/active.$v"
  log "ansible $v: timer active on $active/${#ATARGETS[@]} hosts"
}

ansible_phase() {
  ansible_venv
  operator_kill   # the operator must not repair what Ansible is measured on
  ansible_capture "${UP[0]}"
  ansible_files
  local v; IFS=, read -r -a AVARIANTS <<<"$ANSIBLE"
  for v in "${AVARIANTS[@]}"; do ansible_run "$v"; done
}
