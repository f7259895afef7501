//! Configuration values as plugins see them: plain std types, no TOML crate.

/// A TOML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Value>),
    /// Keys in the order they were written.
    Table(Vec<(String, Value)>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// A float, or an integer read as one.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Table(t) => t.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The parameters of a component's table (`type` removed), in the order they were written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(pub Vec<(String, Value)>);

impl Params {
    pub fn new(entries: Vec<(String, Value)>) -> Self {
        Self(entries)
    }

    /// The value of `key`, if written.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every key and value, in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A float parameter with a default (an integer is read as a float); an error names
    /// the key when it has the wrong type.
    pub fn float_or(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_float().ok_or_else(|| format!("`{key}` must be a number")),
        }
    }

    /// An integer parameter with a default; a float (even `2.0`) is an error naming the key.
    pub fn int_or(&self, key: &str, default: i64) -> Result<i64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_int().ok_or_else(|| format!("`{key}` must be an integer")),
        }
    }

    /// A string parameter with a default.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| format!("`{key}` must be a string")),
        }
    }

    /// A boolean parameter with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| format!("`{key}` must be true or false")),
        }
    }

    /// Every key not in `known`, for an "unknown key" error.
    pub fn unknown_keys<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !known.contains(k))
            .collect()
    }
}

/// Read access to the whole pipeline configuration, for rules.
pub struct ConfigView<'a> {
    lookup: &'a dyn Fn(&str) -> Option<Value>,
}

impl<'a> ConfigView<'a> {
    /// Made by the host around its own document.
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<Value>) -> Self {
        Self { lookup }
    }

    /// The value at a path, if written: dotted keys (`train.optimizer.lr`), and an
    /// element of an array (of tables) by its 0-based index, as `data.augment.1` or
    /// `data.augment[1]` (then `data.augment[1].p`). The same spelling in a
    /// [`Finding::path`](crate::Finding::path) points the diagnostic at that value.
    pub fn get(&self, path: &str) -> Option<Value> {
        (self.lookup)(path)
    }
}
