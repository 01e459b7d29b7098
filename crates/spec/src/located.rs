//! Positions of YAML nodes, so a diagnostic found on a deserialised value can point
//! at its line and column.
//!
//! serde_yaml deserialises; it reports the position of a syntax error but not of
//! the nodes it produced. yaml-rust2's marked events give every node's position;
//! this module keeps just enough of them (a tree of positions with scalar keys) to
//! map a document path such as `method[1].fault` back to `line:col`.

use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into a document, displayed as `method[1].fault.db.lock`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocPath(pub Vec<Seg>);

impl DocPath {
    pub fn root() -> Self {
        DocPath(Vec::new())
    }
    pub fn key(&self, k: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    pub fn join(&self, other: &DocPath) -> Self {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// 1-based line and column.
pub type Pos = (usize, usize);

#[derive(Debug)]
enum Node {
    Scalar(Pos, String),
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>),
    Other(Pos),
}

impl Node {
    fn pos(&self) -> Pos {
        match self {
            Node::Scalar(p, _) | Node::Seq(p, _) | Node::Map(p, _) | Node::Other(p) => *p,
        }
    }
}

/// Node positions of one YAML document.
#[derive(Debug, Default)]
pub struct SourceMap {
    root: Option<Node>,
}

impl SourceMap {
    /// Builds the map; a document yaml-rust2 cannot read yields an empty map (every
    /// lookup answers 1:1), since serde_yaml has already reported any real syntax error.
    pub fn parse(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        match parser.load(&mut builder, false) {
            Ok(()) => SourceMap {
                root: builder.done.into_iter().next(),
            },
            Err(_) => SourceMap::default(),
        }
    }

    /// Position of the node at `path`, or of its deepest existing ancestor.
    pub fn locate(&self, path: &DocPath) -> Pos {
        self.walk(path, false)
    }

    /// Position of the key that names the last segment of `path` (for "unknown key"
    /// errors); falls back to `locate`.
    pub fn locate_key(&self, path: &DocPath) -> Pos {
        self.walk(path, true)
    }

    /// The position of the first key that repeats an earlier key of its mapping.
    pub fn first_duplicate_key(&self) -> Option<Pos> {
        fn visit(node: &Node) -> Option<Pos> {
            match node {
                Node::Map(_, entries) => {
                    for (i, (key, _)) in entries.iter().enumerate() {
                        if let Node::Scalar(p, k) = key
                            && entries[..i]
                                .iter()
                                .any(|(e, _)| matches!(e, Node::Scalar(_, s) if s == k))
                        {
                            return Some(*p);
                        }
                    }
                    entries
                        .iter()
                        .find_map(|(k, v)| visit(k).or_else(|| visit(v)))
                }
                Node::Seq(_, items) => items.iter().find_map(visit),
                _ => None,
            }
        }
        self.root.as_ref().and_then(visit)
    }

    fn walk(&self, path: &DocPath, want_key: bool) -> Pos {
        let Some(mut node) = self.root.as_ref() else {
            return (1, 1);
        };
        let last = path.0.len().saturating_sub(1);
        for (i, seg) in path.0.iter().enumerate() {
            let next = match (seg, node) {
                (Seg::Key(k), Node::Map(_, entries)) => {
                    let found = entries
                        .iter()
                        .find(|(key, _)| matches!(key, Node::Scalar(_, s) if s == k));
                    match found {
                        Some((key, _)) if want_key && i == last => return key.pos(),
                        Some((_, value)) => Some(value),
                        None => None,
                    }
                }
                (Seg::Index(n), Node::Seq(_, items)) => items.get(*n),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos()
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Node>,
    done: Vec<Node>,
}

fn pos(m: Marker) -> Pos {
    (m.line(), m.col() + 1)
}

impl Builder {
    fn add(&mut self, node: Node) {
        match self.stack.last_mut() {
            Some(Node::Seq(_, items)) => items.push(node),
            Some(Node::Map(_, entries)) => {
                // Keys and values arrive alternately; a pending key is a pair whose
                // value is a placeholder.
                match entries.last_mut() {
                    Some((_, v @ Node::Other((0, 0)))) => *v = node,
                    _ => entries.push((node, Node::Other((0, 0)))),
                }
            }
            _ => self.done.push(node),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => self.add(Node::Scalar(pos(mark), value)),
            Event::Alias(_) => self.add(Node::Other(pos(mark))),
            Event::SequenceStart(..) => self.stack.push(Node::Seq(pos(mark), Vec::new())),
            Event::MappingStart(..) => self.stack.push(Node::Map(pos(mark), Vec::new())),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(node) = self.stack.pop() {
                    self.add(node);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_nodes_and_keys() {
        let text = "a: 1\nlist:\n  - x: 1\n    y: [1, 2]\n  - z: {w: 3}\n";
        let map = SourceMap::parse(text);
        let root = DocPath::root();
        assert_eq!(map.locate(&root.key("a")), (1, 4));
        assert_eq!(map.locate_key(&root.key("a")), (1, 1));
        assert_eq!(
            map.locate(&root.key("list").index(0).key("y").index(1)),
            (4, 12)
        );
        assert_eq!(
            map.locate_key(&root.key("list").index(1).key("z").key("w")),
            (5, 9)
        );
        // Missing tail: the deepest ancestor that exists.
        assert_eq!(
            map.locate(&root.key("list").index(0).key("nope")),
            map.locate(&root.key("list").index(0))
        );
        assert_eq!(root.key("list").index(0).key("y").to_string(), "list[0].y");
    }
}
