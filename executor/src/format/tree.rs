//! Tree blobs and their nodes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::quote::{quote, unquote};
use super::time::GoTime;
use crate::id::Id;

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Tree {
    #[serde(deserialize_with = "null_as_empty")]
    pub nodes: Vec<Node>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Node>, D::Error> {
    Ok(Option::<Vec<Node>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("tree JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("duplicate node name {0:?}")]
    Duplicate(String),
}

impl Tree {
    /// Parse a tree blob. Two entries of one name are refused: a restore would create the
    /// second where the first already is (a symlink, say, where a directory's children
    /// were just written), and restic never writes such trees.
    pub fn parse(data: &[u8]) -> Result<Tree, TreeError> {
        let tree: Tree = serde_json::from_slice(data)?;
        // restic sorts nodes by name, so a duplicate is a neighbour; only an unsorted tree
        // pays for sorting a copy of the names.
        let sorted = tree.nodes.windows(2).all(|w| w[0].name < w[1].name);
        if !sorted {
            let mut names: Vec<&[u8]> = tree.nodes.iter().map(|n| &n.name[..]).collect();
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(TreeError::Duplicate(quote(w[0])));
            }
        }
        Ok(tree)
    }

    /// Serialize in restic's shape (`{"nodes":[...]}\n`), nodes sorted by raw name bytes.
    pub fn to_json(mut self) -> Result<Vec<u8>, TreeError> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = self.nodes.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(TreeError::Duplicate(quote(&w[0].name)));
        }
        let mut v = serde_json::to_vec(&self)?;
        v.push(b'\n');
        Ok(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    #[default]
    File,
    Dir,
    Symlink,
    Dev,
    Chardev,
    Fifo,
    Socket,
    Irregular,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: String,
    #[serde(with = "b64bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Node {
    #[serde(serialize_with = "ser_name", deserialize_with = "de_name")]
    pub name: Vec<u8>,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    #[serde(skip_serializing_if = "is_zero32")]
    pub mode: u32,
    pub mtime: GoTime,
    pub atime: GoTime,
    pub ctime: GoTime,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "is_zero64")]
    pub inode: u64,
    #[serde(skip_serializing_if = "is_zero64")]
    pub device_id: u64,
    #[serde(skip_serializing_if = "is_zero64")]
    pub size: u64,
    #[serde(skip_serializing_if = "is_zero64")]
    pub links: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub linktarget: String,
    #[serde(skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub linktarget_raw: Option<Vec<u8>>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty_x"
    )]
    pub extended_attributes: Vec<Xattr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generic_attributes: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "is_zero64")]
    pub device: u64,
    /// Always written: `[]` for empty files, `null` for non-files (restic's check needs it).
    pub content: Option<Vec<Id>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Node {
    /// The symlink target as raw bytes (`linktarget_raw` wins, as in restic 0.16+).
    pub fn link_target(&self) -> Vec<u8> {
        match &self.linktarget_raw {
            Some(raw) => raw.clone(),
            None => self.linktarget.as_bytes().to_vec(),
        }
    }

    pub fn set_link_target(&mut self, raw: &[u8]) {
        self.linktarget = String::from_utf8_lossy(raw).into_owned();
        self.linktarget_raw = std::str::from_utf8(raw).is_err().then(|| raw.to_vec());
    }

    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}
fn is_zero64(v: &u64) -> bool {
    *v == 0
}

fn null_as_empty_x<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Xattr>, D::Error> {
    Ok(Option::<Vec<Xattr>>::deserialize(d)?.unwrap_or_default())
}

fn ser_name<S: Serializer>(name: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&quote(name))
}

fn de_name<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    unquote(&s).map_err(serde::de::Error::custom)
}

mod b64bytes {
    use super::*;
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        B64.decode(s).map_err(serde::de::Error::custom)
    }
}

mod opt_b64 {
    use super::*;
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&B64.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => B64.decode(s).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_trees_parse_and_reserialize_sorted() {
        for repo in ["repo-v1", "repo-v2"] {
            let dir = format!(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/testdata/restic-fixtures/vectors/{}/plaintext/trees"
                ),
                repo
            );
            for e in std::fs::read_dir(dir).unwrap() {
                let data = std::fs::read(e.unwrap().path()).unwrap();
                let t = Tree::parse(&data).unwrap();
                let names: Vec<_> = t.nodes.iter().map(|n| n.name.clone()).collect();
                let mut sorted = names.clone();
                sorted.sort();
                assert_eq!(names, sorted, "restic sorts by raw bytes");
                for n in &t.nodes {
                    if n.node_type == NodeType::File {
                        assert!(n.content.is_some());
                    }
                }
                let again = Tree::parse(&t.clone().to_json().unwrap()).unwrap();
                assert_eq!(again.nodes.len(), t.nodes.len());
            }
        }
    }

    #[test]
    fn content_always_serialized_and_raw_name_order() {
        let mut a = Node {
            name: b"order-\xff.txt".to_vec(),
            content: Some(vec![]),
            ..Default::default()
        };
        a.size = 0;
        let b = Node {
            name: b"order-~.txt".to_vec(),
            node_type: NodeType::Symlink,
            ..Default::default()
        };
        let json = String::from_utf8(Tree { nodes: vec![a, b] }.to_json().unwrap()).unwrap();
        let first = json.find("order-~").unwrap();
        let second = json.find("order-\\\\xff").unwrap();
        assert!(first < second, "{json}");
        assert!(json.contains(r#""content":[]"#));
        assert!(json.contains(r#""content":null"#));
        assert!(json.ends_with("]}\n"));
        assert!(!json.contains("\"size\""));
    }
}
