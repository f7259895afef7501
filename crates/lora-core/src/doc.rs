//! The configuration as a spanned tree of plain values, for validation rules.
//!
//! Rules read values by dotted path (`train.optimizer.lr`) whatever the
//! component's schema, so that they can run even where a table failed to
//! deserialize, and every value keeps the location it was written at.

use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{Location, SourceFile};

/// One value of the document and where it was written.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    /// Keys in the order they were written.
    Table(Vec<(String, Node)>),
}

impl Value {
    pub fn type_str(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Boolean(_) => "boolean",
            Value::Datetime(_) => "datetime",
            Value::Array(_) => "array",
            Value::Table(_) => "table",
        }
    }
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self.value {
            Value::Integer(i) => Some(i),
            _ => None,
        }
    }

    /// A float, or an integer read as one (TOML users write `lr = 1` too).
    pub fn as_float(&self) -> Option<f64> {
        match self.value {
            Value::Float(f) => Some(f),
            Value::Integer(i) => Some(i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Boolean(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&[(String, Node)]> {
        match &self.value {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The child `key` of a table.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_table()?.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }
}

/// A whole pipeline document.
#[derive(Debug, Clone)]
pub struct ConfigDoc {
    pub file: Arc<SourceFile>,
    pub root: Node,
}

impl ConfigDoc {
    /// Parses the document; a syntax error is a diagnostic with its location.
    pub fn parse(file: &Arc<SourceFile>) -> Result<Self, crate::diag::Diagnostics> {
        let table = DeTable::parse(&file.text).map_err(|e| crate::config::syntax_error(file, &e))?;
        let span = table.span();
        let root = convert_table(file, table.get_ref(), span);
        Ok(Self {
            file: file.clone(),
            root,
        })
    }

    /// The node at a dotted path (`train.optimizer.lr`).
    pub fn get(&self, path: &str) -> Option<&Node> {
        path.split('.').try_fold(&self.root, |node, key| node.get(key))
    }

    /// Every leaf (non-table value) with its dotted path, in document order.
    pub fn leaves(&self) -> Vec<(String, &Node)> {
        let mut out = Vec::new();
        collect_leaves(&self.root, String::new(), &mut out);
        out
    }
}

fn collect_leaves<'a>(node: &'a Node, prefix: String, out: &mut Vec<(String, &'a Node)>) {
    match &node.value {
        Value::Table(t) => {
            for (k, n) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(n, path, out);
            }
        }
        _ => out.push((prefix, node)),
    }
}

fn location(file: &Arc<SourceFile>, span: std::ops::Range<usize>) -> Location {
    Location {
        file: file.clone(),
        span,
    }
}

fn convert_table(file: &Arc<SourceFile>, table: &DeTable<'_>, span: std::ops::Range<usize>) -> Node {
    let mut entries: Vec<(usize, String, Node)> = table
        .iter()
        .map(|(k, v)| (k.span().start, k.get_ref().to_string(), convert(file, v)))
        .collect();
    // toml keeps keys sorted; rules and `config show` want the written order.
    entries.sort_by_key(|(start, _, _)| *start);
    Node {
        value: Value::Table(entries.into_iter().map(|(_, k, n)| (k, n)).collect()),
        location: location(file, span),
    }
}

fn convert(file: &Arc<SourceFile>, v: &Spanned<DeValue<'_>>) -> Node {
    let span = v.span();
    let value = match v.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            match i64::from_str_radix(&digits, i.radix()) {
                Ok(n) => Value::Integer(n),
                // Out of i64's range: keep it visible to rules as a float.
                Err(_) => Value::Float(digits.parse().unwrap_or(f64::INFINITY)),
            }
        }
        DeValue::Float(f) => Value::Float(parse_float(f.as_str())),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(a.iter().map(|e| convert(file, e)).collect()),
        DeValue::Table(t) => return convert_table(file, t, span),
    };
    Node {
        value,
        location: location(file, span),
    }
}

/// TOML floats: underscores, `inf`, `+inf`, `-inf`, `nan`.
fn parse_float(text: &str) -> f64 {
    let t = text.replace('_', "");
    match t.trim_start_matches(['+', '-']) {
        "inf" => {
            if t.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }
        }
        "nan" => f64::NAN,
        _ => t.parse().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_type_order_and_location() {
        let file = SourceFile::new(
            "p.toml",
            "[train]\nepochs = 1_0\n\n[train.optimizer]\nlr = 2e-3\nbetas = [0.9, 1]\n".into(),
        );
        let doc = ConfigDoc::parse(&file).unwrap();
        let epochs = doc.get("train.epochs").unwrap();
        assert_eq!(epochs.as_int(), Some(10));
        assert_eq!(epochs.location.line_col(), (2, 10));
        assert_eq!(doc.get("train.optimizer.lr").unwrap().as_float(), Some(2e-3));
        let betas = doc.get("train.optimizer.betas").unwrap().as_array().unwrap();
        assert_eq!(betas[1].as_float(), Some(1.0));
        let leaves: Vec<String> = doc.leaves().into_iter().map(|(p, _)| p).collect();
        assert_eq!(leaves, ["train.epochs", "train.optimizer.lr", "train.optimizer.betas"]);
        assert!(doc.get("train.nope").is_none());
        assert!(parse_float("nan").is_nan());
        assert_eq!(parse_float("-inf"), f64::NEG_INFINITY);
    }
}
