//! Reading rows (text plus raw label) from CSV and JSONL files.
//!
//! Labels stay raw strings here; mapping them to class ids needs the label
//! map, which may itself come from the rows (see [`crate::labels`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use lora_core::{Error, Result};
use serde_json::Value;

use crate::config::SourceFormat;

/// One example as read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub text: String,
    /// The label as written; a JSON integer is kept in its decimal string form.
    pub label: String,
    /// 1-based line of the row in its file, for error messages.
    pub line: usize,
}

/// Reads every row of `path` in file order.
pub fn read_rows(path: &Path, format: SourceFormat, text_column: &str, label_column: &str) -> Result<Vec<RawRow>> {
    match format {
        SourceFormat::Csv { delimiter } => read_csv(path, delimiter, text_column, label_column),
        SourceFormat::Jsonl => read_jsonl(path, text_column, label_column),
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io("cannot open data file", path, e))
}

fn row_error(path: &Path, line: usize, message: impl std::fmt::Display) -> Error {
    Error::Data(format!("{}:{line}: {message}", path.display()))
}

/// Decodes a CSV field. The real corpus has mojibake (bytes that are not UTF-8),
/// so a bad byte becomes U+FFFD instead of failing the whole file.
fn decode(field: &[u8]) -> String {
    String::from_utf8_lossy(field).into_owned()
}

/// Reads a CSV file with a header row. Raw bytes (`ByteRecord`) rather than
/// `StringRecord`, because the latter rejects any row that is not valid UTF-8.
pub fn read_csv(path: &Path, delimiter: u8, text_column: &str, label_column: &str) -> Result<Vec<RawRow>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot open data file", path, e))?;
    parse_csv(path, &bytes, delimiter, text_column, label_column)
}

/// Counts lines up to a byte offset, forward only (records come in file order).
///
/// The csv crate's own line numbers are one short after a CRLF line ending (it
/// counts the `\n` of `\r\n` only once the next record has begun), so lines are
/// counted here from the record's byte offset: the record starts on the line of
/// its first byte that is not a line ending.
///
/// A region never ends inside a `\r\n`: it ends before a byte that is not a line ending.
struct LineCounter<'a> {
    bytes: &'a [u8],
    at: usize,
    line: usize,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0, line: 1 }
    }

    fn line_of(&mut self, offset: u64) -> usize {
        let mut start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.bytes.len());
        while start < self.bytes.len() && matches!(self.bytes[start], b'\r' | b'\n') {
            start += 1;
        }
        if start < self.at {
            // Never expected (records are read in order); count again from the top.
            self.at = 0;
            self.line = 1;
        }
        // A line ends with `\n`, `\r\n` or a lone `\r` (as the csv crate reads them).
        let region = &self.bytes[self.at..start];
        self.line += region
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && region.get(i + 1) != Some(&b'\n')))
            .count();
        self.at = start;
        self.line
    }
}

/// [`read_csv`] on bytes already in memory (`path` names them in messages).
pub fn parse_csv(
    path: &Path,
    bytes: &[u8],
    delimiter: u8,
    text_column: &str,
    label_column: &str,
) -> Result<Vec<RawRow>> {
    let mut lines = LineCounter::new(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .byte_headers()
        .map_err(|e| row_error(path, 1, format!("cannot read the header row: {e}")))?
        .iter()
        .enumerate()
        // A spreadsheet export often starts with a UTF-8 byte-order mark, which would
        // otherwise become part of the first column's name.
        .map(|(i, f)| {
            let name = decode(f);
            if i == 0 {
                name.trim_start_matches('\u{feff}').to_string()
            } else {
                name
            }
        })
        .collect();
    if header.iter().all(|h| h.is_empty()) {
        return Err(Error::Data(format!(
            "{}: no header row; a csv data file needs one",
            path.display()
        )));
    }
    let column = |name: &str, key: &str| -> Result<usize> {
        header.iter().position(|h| h == name).ok_or_else(|| {
            Error::Data(format!(
                "{}: no column `{name}` ({key}); the header has: {}",
                path.display(),
                header.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let text_at = column(text_column, "text-column")?;
    let label_at = column(label_column, "label-column")?;

    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(0, |p| lines.line_of(p.byte()));
                // csv's own message repeats its (CRLF-miscounted) line number: say it plainly.
                let message = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => format!(
                        "the row has {len} field(s), the rows before it {expected_len}: an unquoted delimiter in the text, or a missing field"
                    ),
                    _ => e.to_string(),
                };
                return Err(row_error(path, line, message));
            }
        }
        let line = record.position().map_or(0, |p| lines.line_of(p.byte()));
        let field = |i: usize| record.get(i).map(decode).unwrap_or_default();
        rows.push(checked(path, line, field(text_at), Some(field(label_at)))?);
    }
    Ok(rows)
}

/// Reads a JSON-lines file: one object per line, blank lines skipped.
/// The label may be a string or a non-negative integer.
pub fn read_jsonl(path: &Path, text_column: &str, label_column: &str) -> Result<Vec<RawRow>> {
    parse_jsonl(path, BufReader::new(open(path)?), text_column, label_column)
}

/// [`read_jsonl`] on any reader (`path` names it in messages).
pub fn parse_jsonl(
    path: &Path,
    mut reader: impl BufRead,
    text_column: &str,
    label_column: &str,
) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io("cannot read data file", path, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        // Same tolerance as for CSV: mojibake in one line should not lose the file.
        let text = String::from_utf8_lossy(&buf);
        let text = if line == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            &text
        };
        if text.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| row_error(path, line, format!("invalid JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(row_error(
                path,
                line,
                format!("expected a JSON object, found {}", json_kind(&value)),
            ));
        };
        let text = match object.get(text_column) {
            None | Some(Value::Null) => {
                return Err(row_error(path, line, format!("no `{text_column}` field (text-column)")));
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(row_error(
                    path,
                    line,
                    format!("`{text_column}` must be a string, found {}", json_kind(other)),
                ));
            }
        };
        let label = match object.get(label_column) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
            Some(other) => {
                return Err(row_error(
                    path,
                    line,
                    format!("`{label_column}` must be a string or a non-negative integer, found {other}"),
                ));
            }
        };
        rows.push(checked(path, line, text, label)?);
    }
    Ok(rows)
}

/// Rejects rows without text or without a label: both are mistakes in the file, not data.
/// The label is trimmed: it is a class name, and `pos ` next to `pos` is a formatting accident.
fn checked(path: &Path, line: usize, text: String, label: Option<String>) -> Result<RawRow> {
    if text.trim().is_empty() {
        return Err(row_error(path, line, "the text is empty"));
    }
    let label = match label.as_deref().map(str::trim) {
        Some(l) if !l.is_empty() => l.to_string(),
        _ => return Err(row_error(path, line, "the label is missing")),
    };
    Ok(RawRow { text, label, line })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::write;

    fn err(r: Result<Vec<RawRow>>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn csv_rows_keep_mojibake_as_replacement_characters() {
        let dir = tempfile::tempdir().unwrap();
        // \xe9 is Latin-1 `é`, not UTF-8; the BOM must not stick to the first column name.
        let path = write(
            dir.path(),
            "d.csv",
            b"\xef\xbb\xbftext,label\n\"caf\xe9, ok\",pos\n\"two\nlines\", neg \n".as_slice(),
        );
        let rows = read_csv(&path, b',', "text", "label").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            RawRow {
                text: "caf\u{fffd}, ok".into(),
                label: "pos".into(),
                line: 2
            }
        );
        assert_eq!(rows[1].text, "two\nlines");
        assert_eq!(rows[1].label, "neg");
        assert_eq!(rows[1].line, 3);
    }

    #[test]
    fn csv_columns_are_found_by_name_with_any_delimiter() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "d.tsv", "id\tsentiment\treview\n1\tgood\tfine film\n");
        let rows = read_csv(&path, b'\t', "review", "sentiment").unwrap();
        assert_eq!((rows[0].text.as_str(), rows[0].label.as_str()), ("fine film", "good"));
    }

    #[test]
    fn a_missing_csv_column_lists_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "d.csv", "review,sentiment\nx,y\n");
        let e = err(read_csv(&path, b',', "text", "sentiment"));
        assert!(e.contains("no column `text` (text-column)"), "{e}");
        assert!(e.contains("`review`, `sentiment`"), "{e}");
    }

    #[test]
    fn csv_rows_without_text_or_label_or_with_wrong_widths_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let empty_text = write(dir.path(), "a.csv", "text,label\nok,pos\n  ,neg\n");
        assert!(err(read_csv(&empty_text, b',', "text", "label")).ends_with("a.csv:3: the text is empty"));
        let no_label = write(dir.path(), "b.csv", "text,label\nok,\n");
        assert!(err(read_csv(&no_label, b',', "text", "label")).ends_with("b.csv:2: the label is missing"));
        let ragged = write(dir.path(), "c.csv", "text,label\nok,pos\nx,y,z\n");
        assert!(err(read_csv(&ragged, b',', "text", "label")).contains("c.csv:3:"));
        let empty = write(dir.path(), "d.csv", "");
        assert!(err(read_csv(&empty, b',', "text", "label")).contains("no header row"));
    }

    #[test]
    fn csv_line_numbers_count_crlf_line_endings() {
        let dir = tempfile::tempdir().unwrap();
        // Lines 2 to 16 are rows, line 17 has a field too many.
        let mut text = String::from("text,label\r\n");
        for i in 2..17 {
            text.push_str(&format!("row {i},pos\r\n"));
        }
        text.push_str("x,y,z\r\n");
        let ragged = write(dir.path(), "ragged.csv", text);
        let e = err(read_csv(&ragged, b',', "text", "label"));
        assert!(
            e.contains("ragged.csv:17: the row has 3 field(s), the rows before it 2"),
            "{e}"
        );
        // A blank line and a quoted field over two lines, with CRLF and LF mixed.
        let mixed = write(
            dir.path(),
            "mixed.csv",
            "text,label\r\nfirst,pos\r\n\r\n\"two\r\nlines\",neg\r\nlast,pos\nend,neg",
        );
        let lines: Vec<usize> = read_csv(&mixed, b',', "text", "label")
            .unwrap()
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, [2, 4, 6, 7]);
        let lf = write(
            dir.path(),
            "lf.csv",
            "text,label\nfirst,pos\n\n\"two\nlines\",neg\nlast,pos\n",
        );
        let lines: Vec<usize> = read_csv(&lf, b',', "text", "label")
            .unwrap()
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, [2, 4, 6]);
        // Old Mac line endings: a lone CR.
        let cr = write(dir.path(), "cr.csv", "text,label\rfirst,pos\r\rsecond,neg\r");
        let lines: Vec<usize> = read_csv(&cr, b',', "text", "label")
            .unwrap()
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn jsonl_labels_may_be_strings_or_integers_and_blank_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes =
            b"{\"text\": \"good film\", \"label\": \"pos\"}\n\n   \n{\"text\": \"bad\", \"label\": 1, \"id\": 9}\n"
                .to_vec();
        bytes.extend_from_slice(b"{\"text\": \"caf\xe9\", \"label\": 0}");
        let path = write(dir.path(), "d.jsonl", bytes);
        let rows = read_jsonl(&path, "text", "label").unwrap();
        let got: Vec<(&str, &str, usize)> = rows
            .iter()
            .map(|r| (r.text.as_str(), r.label.as_str(), r.line))
            .collect();
        assert_eq!(got, [("good film", "pos", 1), ("bad", "1", 4), ("caf\u{fffd}", "0", 5)]);
    }

    #[test]
    fn bad_jsonl_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\",",
                "d.jsonl:2: invalid JSON",
            ),
            ("[1, 2]", "d.jsonl:1: expected a JSON object, found an array"),
            ("{\"label\": \"x\"}", "d.jsonl:1: no `text` field (text-column)"),
            (
                "{\"text\": 3, \"label\": \"x\"}",
                "d.jsonl:1: `text` must be a string, found a number",
            ),
            (
                "{\"text\": \"a\", \"label\": -1}",
                "d.jsonl:1: `label` must be a string or a non-negative integer",
            ),
            (
                "{\"text\": \"a\", \"label\": 1.5}",
                "d.jsonl:1: `label` must be a string",
            ),
            ("{\"text\": \"a\"}", "d.jsonl:1: the label is missing"),
            ("{\"text\": \"\", \"label\": \"x\"}", "d.jsonl:1: the text is empty"),
        ];
        for (content, expected) in cases {
            let path = write(dir.path(), "d.jsonl", content);
            let e = err(read_jsonl(&path, "text", "label"));
            assert!(matches!(read_jsonl(&path, "text", "label"), Err(Error::Data(_))));
            assert!(e.contains(expected), "{content}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error_with_its_path() {
        let e = read_rows(
            Path::new("/nonexistent/d.csv"),
            SourceFormat::Csv { delimiter: b',' },
            "text",
            "label",
        );
        assert!(matches!(e, Err(Error::Io { .. })));
    }
}
