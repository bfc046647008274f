//! Inventories as fleets keep them: Ansible INI and YAML inventories, or a CSV. Pure: text in,
//! hosts out, and an error that names the line or entry it could not read.

use std::collections::BTreeMap;

/// One host of an inventory, as the operator will reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryHost {
    /// The inventory's name for it; becomes the Host object's name.
    pub name: String,
    /// Where SSH connects (`ansible_host`); the name when the inventory gives none.
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Groups the host is in (directly or through `children`), sorted.
    pub groups: Vec<String>,
}

/// Hosts beyond this are refused: an inventory is read whole before anything is scanned.
pub const MAX_HOSTS: usize = 20_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what}: {msg}")]
pub struct InventoryError {
    pub what: String,
    pub msg: String,
}

fn err(what: impl Into<String>, msg: impl Into<String>) -> InventoryError {
    InventoryError {
        what: what.into(),
        msg: msg.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ini,
    Yaml,
    Csv,
}

impl Format {
    /// From the file name: `.yml`/`.yaml`, `.csv`, anything else is INI (Ansible's default).
    pub fn guess(path: &str) -> Format {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".yml") || lower.ends_with(".yaml") {
            Format::Yaml
        } else if lower.ends_with(".csv") {
            Format::Csv
        } else {
            Format::Ini
        }
    }
}

pub fn parse(format: Format, text: &str) -> Result<Vec<InventoryHost>, InventoryError> {
    let hosts = match format {
        Format::Ini => parse_ini(text)?,
        Format::Yaml => parse_yaml(text)?,
        Format::Csv => parse_csv(text)?,
    };
    if hosts.is_empty() {
        return Err(err("inventory", "no hosts in it"));
    }
    Ok(hosts)
}

/// Variables of a host or group that matter here.
#[derive(Clone, Debug, Default)]
struct Vars {
    address: Option<String>,
    port: Option<u16>,
    user: Option<String>,
}

impl Vars {
    fn set(&mut self, what: &str, key: &str, value: &str) -> Result<(), InventoryError> {
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        match key {
            "ansible_host" | "ansible_ssh_host" => self.address = Some(value.to_string()),
            "ansible_port" | "ansible_ssh_port" => {
                self.port = Some(
                    value
                        .parse()
                        .map_err(|_| err(what, format!("{key}={value:?} is not a port number")))?,
                );
            }
            "ansible_user" | "ansible_ssh_user" => self.user = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }

    /// Host variables win over group variables.
    fn or(&self, group: &Vars) -> Vars {
        Vars {
            address: self.address.clone().or_else(|| group.address.clone()),
            port: self.port.or(group.port),
            user: self.user.clone().or_else(|| group.user.clone()),
        }
    }
}

/// What INI and YAML have in common: groups with hosts, vars and children.
#[derive(Default)]
struct Tree {
    /// Host name → its own variables, in the order first seen.
    hosts: Vec<(String, Vars)>,
    group_hosts: BTreeMap<String, Vec<String>>,
    group_vars: BTreeMap<String, Vars>,
    children: BTreeMap<String, Vec<String>>,
}

impl Tree {
    fn add_host(&mut self, group: &str, name: &str, vars: Vars) -> Result<(), InventoryError> {
        match self.hosts.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = vars.or(v),
            None => {
                if self.hosts.len() >= MAX_HOSTS {
                    return Err(err("inventory", format!("more than {MAX_HOSTS} hosts")));
                }
                self.hosts.push((name.to_string(), vars));
            }
        }
        self.group_hosts
            .entry(group.to_string())
            .or_default()
            .push(name.to_string());
        Ok(())
    }

    /// Every group a host is in, through `children` too (cycles are cut).
    fn finish(self) -> Vec<InventoryHost> {
        let mut parents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (parent, kids) in &self.children {
            for k in kids {
                parents.entry(k).or_default().push(parent);
            }
        }
        let mut direct: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (g, hs) in &self.group_hosts {
            for h in hs {
                direct.entry(h).or_default().push(g);
            }
        }
        self.hosts
            .iter()
            .map(|(name, own)| {
                let mut groups: Vec<&str> = Vec::new();
                let mut todo: Vec<&str> = direct.get(name.as_str()).cloned().unwrap_or_default();
                while let Some(g) = todo.pop() {
                    if groups.contains(&g) {
                        continue;
                    }
                    groups.push(g);
                    todo.extend(parents.get(g).into_iter().flatten());
                }
                groups.retain(|g| *g != "all" && *g != "ungrouped");
                groups.sort();
                // The nearest group's vars are not tracked: the first group (sorted) that
                // sets a value gives it, after the host's own.
                let mut vars = own.clone();
                for g in &groups {
                    if let Some(gv) = self.group_vars.get(*g) {
                        vars = vars.or(gv);
                    }
                }
                if let Some(all) = self.group_vars.get("all") {
                    vars = vars.or(all);
                }
                InventoryHost {
                    name: name.clone(),
                    address: vars.address.unwrap_or_else(|| name.clone()),
                    port: vars.port,
                    user: vars.user,
                    groups: groups.into_iter().map(String::from).collect(),
                }
            })
            .collect()
    }
}

/// `web[01:03].example` → web01.example, web02.example, web03.example (Ansible's numeric
/// ranges, keeping the leading zeros of the start); alphabetic ranges `[a:c]` too.
fn expand(pattern: &str, what: &str) -> Result<Vec<String>, InventoryError> {
    let Some(open) = pattern.find('[') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| err(what, format!("{pattern:?}: unclosed '['")))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let (a, b) = body
        .split_once(':')
        .ok_or_else(|| err(what, format!("{pattern:?}: a range is [start:end]")))?;
    let items: Vec<String> = match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) if x <= y && y - x < MAX_HOSTS as u64 => {
            (x..=y).map(|n| format!("{n:0w$}", w = a.len())).collect()
        }
        _ if a.len() == 1 && b.len() == 1 && a <= b => {
            let (x, y) = (a.as_bytes()[0], b.as_bytes()[0]);
            if !(x.is_ascii_alphabetic() && y.is_ascii_alphabetic()) {
                return Err(err(what, format!("{pattern:?}: bad range [{body}]")));
            }
            (x..=y).map(|c| (c as char).to_string()).collect()
        }
        _ => return Err(err(what, format!("{pattern:?}: bad range [{body}]"))),
    };
    let mut out = Vec::new();
    for item in items {
        for rest in expand(tail, what)? {
            out.push(format!("{head}{item}{rest}"));
            if out.len() > MAX_HOSTS {
                return Err(err(what, format!("{pattern:?} expands to too many hosts")));
            }
        }
    }
    Ok(out)
}

fn parse_ini(text: &str) -> Result<Vec<InventoryHost>, InventoryError> {
    enum Section {
        Hosts(String),
        Vars(String),
        Children(String),
    }
    let mut tree = Tree::default();
    let mut section = Section::Hosts("ungrouped".into());
    for (i, raw) in text.lines().enumerate() {
        let what = format!("line {}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(head) = line.strip_prefix('[') {
            let head = head
                .strip_suffix(']')
                .ok_or_else(|| err(&what, format!("{line:?}: a section header ends with ']'")))?;
            section = match head.split_once(':') {
                None => Section::Hosts(head.to_string()),
                Some((g, "vars")) => Section::Vars(g.to_string()),
                Some((g, "children")) => Section::Children(g.to_string()),
                Some((_, kind)) => {
                    return Err(err(&what, format!("unknown section kind {kind:?}")));
                }
            };
            continue;
        }
        match &section {
            Section::Hosts(g) => {
                let mut words = line.split_whitespace();
                let pattern = words.next().unwrap_or_default();
                let mut vars = Vars::default();
                for w in words {
                    if w.starts_with('#') {
                        break;
                    }
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| err(&what, format!("{w:?} is not key=value")))?;
                    vars.set(&what, k, v)?;
                }
                // `host:port` is Ansible's short form for ansible_port.
                for name in expand(pattern, &what)? {
                    let (name, port) = match name.rsplit_once(':') {
                        Some((n, p)) if !n.contains(':') && p.parse::<u16>().is_ok() => {
                            (n.to_string(), p.parse().ok())
                        }
                        _ => (name, None),
                    };
                    let mut v = vars.clone();
                    v.port = v.port.or(port);
                    tree.add_host(g, &name, v)?;
                }
            }
            Section::Vars(g) => {
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| err(&what, format!("{line:?} is not key=value")))?;
                tree.group_vars
                    .entry(g.clone())
                    .or_default()
                    .set(&what, k.trim(), v)?;
            }
            Section::Children(g) => tree
                .children
                .entry(g.clone())
                .or_default()
                .push(line.to_string()),
        }
    }
    Ok(tree.finish())
}

fn parse_yaml(text: &str) -> Result<Vec<InventoryHost>, InventoryError> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| err("YAML inventory", e.to_string()))?;
    let top = doc
        .as_mapping()
        .ok_or_else(|| err("YAML inventory", "the top level must map group names"))?;
    let mut tree = Tree::default();
    for (name, group) in top {
        walk_yaml(&mut tree, yaml_key(name)?, group, 0)?;
    }
    Ok(tree.finish())
}

fn yaml_key(v: &serde_yaml::Value) -> Result<String, InventoryError> {
    match v {
        serde_yaml::Value::String(s) => Ok(s.clone()),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        other => Err(err("YAML inventory", format!("{other:?} is not a name"))),
    }
}

fn yaml_vars(what: &str, v: &serde_yaml::Value) -> Result<Vars, InventoryError> {
    let mut vars = Vars::default();
    if let Some(m) = v.as_mapping() {
        for (k, val) in m {
            let text = match val {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                _ => continue,
            };
            vars.set(what, &yaml_key(k)?, &text)?;
        }
    }
    Ok(vars)
}

fn walk_yaml(
    tree: &mut Tree,
    group: String,
    body: &serde_yaml::Value,
    depth: usize,
) -> Result<(), InventoryError> {
    if depth > 32 {
        return Err(err(
            format!("group {group:?}"),
            "groups nested deeper than 32",
        ));
    }
    let what = format!("group {group:?}");
    let Some(m) = body.as_mapping() else {
        // `group:` with nothing under it.
        return Ok(());
    };
    if let Some(vars) = m.get("vars") {
        tree.group_vars
            .insert(group.clone(), yaml_vars(&what, vars)?);
    }
    if let Some(hosts) = m.get("hosts").and_then(|h| h.as_mapping()) {
        for (pattern, vars) in hosts {
            let vars = yaml_vars(&what, vars)?;
            for name in expand(&yaml_key(pattern)?, &what)? {
                tree.add_host(&group, &name, vars.clone())?;
            }
        }
    }
    if let Some(children) = m.get("children").and_then(|c| c.as_mapping()) {
        for (child, body) in children {
            let child = yaml_key(child)?;
            tree.children
                .entry(group.clone())
                .or_default()
                .push(child.clone());
            walk_yaml(tree, child, body, depth + 1)?;
        }
    }
    Ok(())
}

/// A header line names the columns: `name` is required, `address`, `port`, `user` and
/// `groups` (separated by `;`) are optional.
fn parse_csv(text: &str) -> Result<Vec<InventoryHost>, InventoryError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines.next().ok_or_else(|| err("CSV", "no header line"))?;
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| cols.iter().position(|c| c == name);
    let name_col = col("name").ok_or_else(|| err("CSV header", "needs a 'name' column"))?;
    for c in &cols {
        if !["name", "address", "port", "user", "groups"].contains(&c.as_str()) {
            return Err(err(
                "CSV header",
                format!("unknown column {c:?} (known: name, address, port, user, groups)"),
            ));
        }
    }
    let mut out: Vec<InventoryHost> = Vec::new();
    for (i, line) in lines {
        let what = format!("line {}", i + 1);
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != cols.len() {
            return Err(err(
                &what,
                format!("{} fields where the header has {}", cells.len(), cols.len()),
            ));
        }
        let get = |c: Option<usize>| c.map(|i| cells[i]).filter(|s| !s.is_empty());
        let name = cells[name_col].to_string();
        if name.is_empty() {
            return Err(err(&what, "the name is empty"));
        }
        if out.iter().any(|h| h.name == name) {
            return Err(err(&what, format!("host {name:?} is listed twice")));
        }
        let port = match get(col("port")) {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| err(&what, format!("port {p:?} is not a port number")))?,
            ),
            None => None,
        };
        let mut groups: Vec<String> = get(col("groups"))
            .map(|g| g.split(';').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default();
        groups.retain(|g| !g.is_empty());
        groups.sort();
        out.push(InventoryHost {
            address: get(col("address")).unwrap_or(&name).to_string(),
            port,
            user: get(col("user")).map(String::from),
            groups,
            name,
        });
        if out.len() > MAX_HOSTS {
            return Err(err("CSV", format!("more than {MAX_HOSTS} hosts")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(
        name: &str,
        address: &str,
        port: Option<u16>,
        user: Option<&str>,
        groups: &[&str],
    ) -> InventoryHost {
        InventoryHost {
            name: name.into(),
            address: address.into(),
            port,
            user: user.map(String::from),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn ansible_ini_with_vars_children_ranges_and_short_ports() {
        let ini = "\
# fleet
bastion.example ansible_host=10.0.0.5

[web]
web[01:03].prod.example ansible_user=deploy
db1.prod.example:2222

[db]
db1.prod.example ansible_host=10.0.1.10

[db:vars]
ansible_user=postgres

[prod:children]
web
db

[all:vars]
ansible_port=22
";
        let hosts = parse(Format::Ini, ini).unwrap();
        assert_eq!(
            hosts,
            [
                host("bastion.example", "10.0.0.5", Some(22), None, &[]),
                host(
                    "web01.prod.example",
                    "web01.prod.example",
                    Some(22),
                    Some("deploy"),
                    &["prod", "web"]
                ),
                host(
                    "web02.prod.example",
                    "web02.prod.example",
                    Some(22),
                    Some("deploy"),
                    &["prod", "web"]
                ),
                host(
                    "web03.prod.example",
                    "web03.prod.example",
                    Some(22),
                    Some("deploy"),
                    &["prod", "web"]
                ),
                host(
                    "db1.prod.example",
                    "10.0.1.10",
                    Some(2222),
                    Some("postgres"),
                    &["db", "prod", "web"]
                ),
            ]
        );
    }

    #[test]
    fn ansible_yaml_inventory() {
        let yaml = "
all:
  vars: {ansible_user: admin}
  hosts:
    mail.example: {}
  children:
    web:
      hosts:
        web[a:b].example: {ansible_port: 2200}
    db:
      vars: {ansible_user: postgres}
      hosts:
        db1.example: {ansible_host: 10.0.1.10}
";
        let hosts = parse(Format::Yaml, yaml).unwrap();
        assert_eq!(
            hosts,
            [
                host("mail.example", "mail.example", None, Some("admin"), &[]),
                host(
                    "weba.example",
                    "weba.example",
                    Some(2200),
                    Some("admin"),
                    &["web"]
                ),
                host(
                    "webb.example",
                    "webb.example",
                    Some(2200),
                    Some("admin"),
                    &["web"]
                ),
                host("db1.example", "10.0.1.10", None, Some("postgres"), &["db"]),
            ]
        );
    }

    #[test]
    fn csv_inventory() {
        let csv =
            "name,address,port,user,groups\nweb-1,10.0.0.1,,,web;prod\ndb-1,,2222,postgres,\n";
        assert_eq!(
            parse(Format::Csv, csv).unwrap(),
            [
                host("web-1", "10.0.0.1", None, None, &["prod", "web"]),
                host("db-1", "db-1", Some(2222), Some("postgres"), &[]),
            ]
        );
    }

    #[test]
    fn bad_inventories_name_the_problem() {
        let cases: [(Format, &str, &str); 8] = [
            (Format::Ini, "[web\nweb1", "line 1"),
            (Format::Ini, "web1 ansible_port=ssh", "not a port number"),
            (Format::Ini, "web[3:1]", "bad range"),
            (Format::Ini, "# nothing\n", "no hosts"),
            (Format::Yaml, "- a\n- b\n", "top level"),
            (Format::Csv, "address\n1.2.3.4\n", "'name' column"),
            (Format::Csv, "name,port\nweb,22,x\n", "line 2: 3 fields"),
            (Format::Csv, "name,colour\nweb,red\n", "unknown column"),
        ];
        for (f, text, want) in cases {
            let e = parse(f, text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let huge = format!("web[0:{}]", MAX_HOSTS + 5);
        assert!(parse(Format::Ini, &huge).is_err());
    }

    #[test]
    fn format_from_the_file_name() {
        assert_eq!(Format::guess("hosts.yml"), Format::Yaml);
        assert_eq!(Format::guess("fleet.CSV"), Format::Csv);
        assert_eq!(Format::guess("inventory/hosts"), Format::Ini);
    }
}
