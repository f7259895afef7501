//! The label map (class name <-> class id) and turning raw labels into ids.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use lora_core::{Error, Result};

use crate::config::OnUnknownLabel;
use crate::read::RawRow;

/// Class names in class-id order, with a reverse index.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    names: Vec<String>,
    index: HashMap<String, u32>,
    /// Whether the user wrote the map. Only then may an integer label be read as a
    /// class index: for a map derived from the data, an integer that is not one of
    /// its names is a label the training file never had, not a position.
    explicit: bool,
}

impl LabelMap {
    /// The map given in the configuration; index = class id.
    pub fn explicit(names: Vec<String>) -> Self {
        Self::build(names, true)
    }

    /// The sorted distinct labels of `rows`. When every label is an integer they
    /// are sorted by value, so that labels `0..n` get class ids `0..n` (and `10`
    /// does not land between `1` and `2`); otherwise by string.
    pub fn from_rows(rows: &[RawRow]) -> Self {
        let distinct: BTreeSet<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        let mut names: Vec<String> = distinct.into_iter().map(str::to_string).collect();
        if names.iter().all(|n| n.parse::<u64>().is_ok()) {
            names.sort_by_key(|n| (n.parse::<u64>().unwrap_or(u64::MAX), n.clone()));
        }
        Self::build(names, false)
    }

    fn build(names: Vec<String>, explicit: bool) -> Self {
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i as u32)).collect();
        Self { names, index, explicit }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The class id of a raw label: its name, or, for an explicit map, an integer
    /// below the number of classes read as the class index (`labels = ["neg", "pos"]`
    /// with a file of `0`/`1`). A name always wins, so `labels = ["1", ..., "5"]`
    /// with star ratings `1..5` maps by name, not shifted by one.
    pub fn class_of(&self, label: &str) -> Option<u32> {
        if let Some(&id) = self.index.get(label) {
            return Some(id);
        }
        if self.explicit {
            return label
                .parse::<usize>()
                .ok()
                .filter(|&i| i < self.names.len())
                .map(|i| i as u32);
        }
        None
    }

    /// Class ids for `rows`, in order. Unknown labels are an error naming the row,
    /// or are dropped under [`OnUnknownLabel::Skip`].
    pub fn resolve(&self, rows: Vec<RawRow>, policy: OnUnknownLabel, path: &Path) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            match self.class_of(&row.label) {
                Some(id) => out.push((row.text, id)),
                None if policy == OnUnknownLabel::Skip => {}
                None => {
                    let origin = if self.explicit {
                        "`labels`"
                    } else {
                        "the labels of the training file"
                    };
                    return Err(Error::Data(format!(
                        "{}:{}: label `{}` is not one of {origin} ({}); set on-unknown-label = \"skip\" to drop such rows",
                        path.display(),
                        row.line,
                        row.label,
                        self.names.join(", ")
                    )));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(labels: &[&str]) -> Vec<RawRow> {
        labels
            .iter()
            .enumerate()
            .map(|(i, l)| RawRow {
                text: format!("t{i}"),
                label: l.to_string(),
                line: i + 2,
            })
            .collect()
    }

    #[test]
    fn a_derived_map_is_the_sorted_distinct_labels() {
        assert_eq!(
            LabelMap::from_rows(&rows(&["pos", "neg", "pos", "mixed"])).names(),
            ["mixed", "neg", "pos"]
        );
        // All integers: by value, so that `2` comes before `10`.
        assert_eq!(
            LabelMap::from_rows(&rows(&["10", "2", "0", "1"])).names(),
            ["0", "1", "2", "10"]
        );
    }

    #[test]
    fn an_explicit_map_keeps_its_order_and_reads_integers_as_indices() {
        let map = LabelMap::explicit(vec!["pos".into(), "neg".into()]);
        assert_eq!(map.class_of("pos"), Some(0));
        assert_eq!(map.class_of("neg"), Some(1));
        assert_eq!(map.class_of("1"), Some(1));
        assert_eq!(map.class_of("2"), None);
        // A name wins over an index.
        let stars = LabelMap::explicit(["1", "2", "3"].map(String::from).to_vec());
        assert_eq!(stars.class_of("1"), Some(0));
        assert_eq!(stars.class_of("0"), Some(0));
        // A derived map never reads an unknown integer as an index.
        assert_eq!(LabelMap::from_rows(&rows(&["3", "4"])).class_of("0"), None);
    }

    #[test]
    fn unknown_labels_are_an_error_naming_the_row_or_are_skipped() {
        let map = LabelMap::explicit(vec!["neg".into(), "pos".into()]);
        let data = rows(&["pos", "meh", "neg"]);
        let e = map
            .resolve(data.clone(), OnUnknownLabel::Error, Path::new("d.csv"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d.csv:3: label `meh` is not one of `labels` (neg, pos)"),
            "{e}"
        );
        let kept = map.resolve(data, OnUnknownLabel::Skip, Path::new("d.csv")).unwrap();
        assert_eq!(kept, [("t0".to_string(), 1), ("t2".to_string(), 0)]);
    }
}
