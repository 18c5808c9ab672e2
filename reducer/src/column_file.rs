//! A run's data as a text file of columns: a plain one any tool reads (`numpy.loadtxt`,
//! gnuplot, a spreadsheet), and XDI 1.0, the XAS Data Interchange format, for XAFS scans.
//! [`write_atomically`] puts either (or a plot's PNG) in a folder without ever leaving a half
//! file under the final name.
//!
//! Numbers are written in their shortest form that reads back to the same `f64`: Rust's `{}`
//! between 1e-5 and 1e16, `{:e}` outside, so a file holds exactly what the run measured.
//!
//! XDI files are checked against what the XAS community's reference reader (`libxdifile`, from
//! the XDI authors, the one Larch and Athena go through) accepts, which is in places stricter
//! than the specification's text: keys without dashes, families of two characters or more, no
//! NaN anywhere, a first column neither negative nor infinite, at least two columns and three
//! rows. A file refused here would be refused there, with a less useful message.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A column: name, unit (may be empty), values (one per row).
#[derive(Debug, Clone, Copy)]
pub struct Column<'a> {
    /// One word: no whitespace (for XDI: a letter, then letters, digits or `_`).
    pub name: &'a str,
    /// One word, or empty.
    pub unit: &'a str,
    /// One per row; every column of a file has as many.
    pub values: &'a [f64],
}

/// An XDI file's metadata.
#[derive(Debug, Clone, Copy)]
pub struct XdiFields<'a> {
    /// `Family.key` and value, in the order written: `Element.symbol` and `Element.edge` are
    /// required, `Mono.d_spacing` too when the first column is `angle`. The `Column.N` fields
    /// come from the columns and may not be given here.
    pub fields: &'a [(&'a str, String)],
    /// The user's comment lines (the spec keeps this section for people, not software).
    pub comments: &'a [&'a str],
}

/// Why a column file could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    /// No column at all.
    #[error("a column file needs at least one column")]
    NoColumns,
    /// Columns of unequal length.
    #[error("column {name:?} has {len} values but column {first:?} has {expected}")]
    Length {
        /// The column that differs.
        name: String,
        /// Its length.
        len: usize,
        /// The first column.
        first: String,
        /// The first column's length.
        expected: usize,
    },
    /// A column name that is not one word (or, in XDI, not a label).
    #[error("column name {name:?}: {reason}")]
    ColumnName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A unit that is not one word.
    #[error("unit {unit:?} of column {column:?}: {reason}")]
    Unit {
        /// The column.
        column: String,
        /// The unit.
        unit: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header key or value that would break the header's lines.
    #[error("header {key:?}: {reason}")]
    Header {
        /// The key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An XDI field that is not `Family.key: value` as XDI allows.
    #[error("XDI field {name:?}: {reason}")]
    Field {
        /// The field's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A required XDI field is missing.
    #[error("XDI needs the field {0}")]
    Missing(&'static str),
    /// XDI's first column is not the abscissa.
    #[error("XDI's first column must be energy or angle, with its unit; got {name:?} {unit:?}")]
    Abscissa {
        /// The first column's name.
        name: String,
        /// Its unit.
        unit: String,
    },
    /// Too few or too many columns or rows for XDI.
    #[error(
        "XDI with {columns} columns and {rows} rows: the reference reader needs 2 to 128 columns and at least 3 rows"
    )]
    Size {
        /// Columns given.
        columns: usize,
        /// Rows given.
        rows: usize,
    },
    /// A value XDI cannot hold there.
    #[error("XDI column {column:?} row {row}: {value} cannot be read back ({reason})")]
    Value {
        /// The column.
        column: String,
        /// The row, from 0.
        row: usize,
        /// The value.
        value: f64,
        /// Why.
        reason: &'static str,
    },
    /// A comment line that would be read as something else.
    #[error("XDI comment {comment:?}: {reason}")]
    Comment {
        /// The comment.
        comment: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file name that could leave the folder or is not a plain name.
    #[error("file name {name:?}: {reason}")]
    FileName {
        /// The name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The file system refused.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// `# key: value` header lines then a `# name1 name2 ...` line then rows, space separated,
/// floats written so they read back to the same f64 (Rust's `{}` for f64 / ryu), NaN as `nan`.
///
/// Each column's unit goes in a `# Column.N: name unit` header line, as in XDI, before the
/// names line. Zero rows is a file with a header only.
pub fn column_text(
    header: &[(&str, String)],
    columns: &[Column<'_>],
) -> Result<String, ColumnError> {
    let rows = check_columns(columns)?;
    for column in columns {
        check_word(column.name).map_err(|reason| ColumnError::ColumnName {
            name: column.name.to_owned(),
            reason,
        })?;
        if column.name.starts_with('#') {
            return Err(ColumnError::ColumnName {
                name: column.name.to_owned(),
                reason: "starts with the comment sign",
            });
        }
        check_unit(column)?;
    }
    let mut text = String::new();
    for (key, value) in header {
        let bad = |reason| ColumnError::Header {
            key: (*key).to_owned(),
            reason,
        };
        if key.is_empty() {
            return Err(bad("empty"));
        }
        if key.contains(':') {
            return Err(bad("the key contains ':', which ends it"));
        }
        if key.chars().chain(value.chars()).any(char::is_control) {
            return Err(bad(
                "a control character (a line break?) in the key or value",
            ));
        }
        let _ = writeln!(text, "# {key}: {value}");
    }
    column_lines(&mut text, columns);
    write_table(&mut text, columns, rows);
    Ok(text)
}

/// XDI 1.0 (<https://github.com/XraySpectroscopy/XAS-Data-Interchange> spec): version line
/// `# XDI/1.0 beamflow/<version>`, `Column.N: name unit` for every column, the given fields
/// (`Element.symbol`, `Element.edge`, `Mono.d_spacing`, `Scan.start_time`, `Facility.name`,
/// `Beamline.name`, ...: namespaced `Family.key: value`), `# ///` then user comments, `#----`,
/// the column-name line, and the rows. Refuse (typed error) what XDI forbids: columns of unequal
/// length, a field name that is not `Family.key` with the spec's characters, missing required
/// `Element.symbol`/`Element.edge` and Column.1 = energy or angle.
///
/// Timestamps (`Scan.start_time`, `Scan.end_time`) must be ISO 8601 with seconds
/// (`2026-11-30T17:35:12`, a fraction and an offset may follow); `Element.symbol` an element and
/// `Element.edge` an edge (K, L1, M5, ...) as the reference reader knows them.
///
/// Comments are free text, but for the two separators; the reference reader drops empty
/// comment lines and cuts each at its first `:`, which the spec does not ask for.
pub fn xdi(fields: &XdiFields<'_>, columns: &[Column<'_>]) -> Result<String, ColumnError> {
    let rows = check_columns(columns)?;
    if !(2..=MAX_XDI_COLUMNS).contains(&columns.len()) || rows < 3 {
        return Err(ColumnError::Size {
            columns: columns.len(),
            rows,
        });
    }
    let first = &columns[0];
    if !matches!(first.name, "energy" | "angle") || first.unit.is_empty() {
        return Err(ColumnError::Abscissa {
            name: first.name.to_owned(),
            unit: first.unit.to_owned(),
        });
    }
    for (index, column) in columns.iter().enumerate() {
        check_label(column.name).map_err(|reason| ColumnError::ColumnName {
            name: column.name.to_owned(),
            reason,
        })?;
        check_unit(column)?;
        for (row, &value) in column.values.iter().enumerate() {
            let reason = if value.is_nan() {
                Some("the reference reader takes no NaN")
            } else if index == 0 && (!value.is_finite() || value.is_sign_negative()) {
                // The reader finds the data by a row starting with a digit.
                Some("the first column must be finite and not negative")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ColumnError::Value {
                    column: column.name.to_owned(),
                    row,
                    value,
                    reason,
                });
            }
        }
    }

    let mut seen: Vec<String> = Vec::new();
    for (name, value) in fields.fields {
        let bad = |reason: &str| ColumnError::Field {
            name: (*name).to_owned(),
            reason: reason.to_owned(),
        };
        let (family, key) = name.split_once('.').ok_or_else(|| bad("not Family.key"))?;
        check_family(family).map_err(bad)?;
        check_key(key).map_err(bad)?;
        let lower = name.to_ascii_lowercase();
        if family.eq_ignore_ascii_case("column") {
            return Err(bad("Column.N fields come from the columns"));
        }
        if seen.contains(&lower) {
            return Err(bad("given twice (field names ignore case)"));
        }
        if value.chars().any(char::is_control) {
            return Err(bad("a control character (a line break?) in the value"));
        }
        check_value(&lower, value.trim()).map_err(|reason| bad(&reason))?;
        seen.push(lower);
    }
    let has = |name: &str| seen.iter().any(|s| s == name);
    for required in ["Element.symbol", "Element.edge"] {
        if !has(&required.to_ascii_lowercase()) {
            return Err(ColumnError::Missing(required));
        }
    }
    if first.name == "angle" && !has("mono.d_spacing") {
        return Err(ColumnError::Missing("Mono.d_spacing"));
    }
    for comment in fields.comments {
        let bad = |reason| ColumnError::Comment {
            comment: (*comment).to_owned(),
            reason,
        };
        if comment.chars().any(char::is_control) {
            return Err(bad("a control character (a line break?)"));
        }
        let start = comment.trim_start();
        if start.starts_with("///") || start.starts_with("---") {
            return Err(bad(
                "would be read as the end of the fields or of the header",
            ));
        }
    }

    let mut text = format!("# XDI/1.0 beamflow/{}\n", env!("CARGO_PKG_VERSION"));
    column_lines(&mut text, columns);
    for (name, value) in fields.fields {
        let _ = writeln!(text, "# {name}: {}", value.trim());
    }
    text.push_str("# ///\n");
    for comment in fields.comments {
        let _ = writeln!(text, "# {comment}");
    }
    text.push_str("#----\n");
    write_table(&mut text, columns, rows);
    Ok(text)
}

/// The reference reader's limit.
const MAX_XDI_COLUMNS: usize = 128;

/// The rows, if every column has as many.
fn check_columns(columns: &[Column<'_>]) -> Result<usize, ColumnError> {
    let first = columns.first().ok_or(ColumnError::NoColumns)?;
    let rows = first.values.len();
    for column in columns {
        if column.values.len() != rows {
            return Err(ColumnError::Length {
                name: column.name.to_owned(),
                len: column.values.len(),
                first: first.name.to_owned(),
                expected: rows,
            });
        }
    }
    Ok(rows)
}

fn check_word(word: &str) -> Result<(), &'static str> {
    if word.is_empty() {
        Err("empty")
    } else if word.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("not one word (whitespace or a control character)")
    } else {
        Ok(())
    }
}

fn check_unit(column: &Column<'_>) -> Result<(), ColumnError> {
    if column.unit.is_empty() {
        return Ok(());
    }
    check_word(column.unit).map_err(|reason| ColumnError::Unit {
        column: column.name.to_owned(),
        unit: column.unit.to_owned(),
        reason,
    })
}

/// XDI's column label: a letter, then letters, digits or `_`.
fn check_label(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        _ => return Err("an XDI label starts with a letter (ASCII)"),
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("an XDI label has only letters, digits and '_' (It/I0 could be It_I0)")
    }
}

/// The spec: a letter first; the reference reader: two characters or more, letters, digits, `_`.
fn check_family(family: &str) -> Result<(), &'static str> {
    let mut chars = family.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if first_ok && family.len() >= 2 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("the family is a letter then letters, digits or '_', two characters or more")
    }
}

/// The spec allows `-` too; the reference reader refuses the whole file for one.
fn check_key(key: &str) -> Result<(), &'static str> {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err("the key is letters, digits or '_' (one dot only)")
    }
}

/// The values the reference reader validates, by lower-case field name.
fn check_value(name: &str, value: &str) -> Result<(), String> {
    match name {
        "element.symbol" if !ELEMENTS.contains(&value) => {
            Err(format!("{value:?} is not an element symbol"))
        }
        "element.edge" if !EDGES.contains(&value) => {
            Err(format!("{value:?} is not an edge: {}", EDGES.join(", ")))
        }
        "mono.d_spacing" => match value.parse::<f64>() {
            Ok(d) if d.is_finite() && d > 0.0 => Ok(()),
            _ => Err(format!(
                "{value:?} is not a positive number (in Å, without the unit)"
            )),
        },
        "scan.start_time" | "scan.end_time" if !is_timestamp(value) => Err(format!(
            "{value:?} is not ISO 8601 with seconds, e.g. 2026-11-30T17:35:12"
        )),
        _ => Ok(()),
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS`, a real date and time, then anything (a fraction, an offset).
fn is_timestamp(value: &str) -> bool {
    let Some(head) = value.get(..19) else {
        return false;
    };
    let shape = head.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T' || b == b' ',
        13 | 16 => b == b':',
        _ => b.is_ascii_digit(),
    });
    shape
        && head
            .replacen(' ', "T", 1)
            .parse::<jiff::civil::DateTime>()
            .is_ok()
}

/// Absorption edges as the reference reader knows them.
const EDGES: [&str; 27] = [
    "K", "L", "L1", "L2", "L3", "M", "M1", "M2", "M3", "M4", "M5", "N", "N1", "N2", "N3", "N4",
    "N5", "N6", "N7", "O", "O1", "O2", "O3", "O4", "O5", "O6", "O7",
];

/// Element symbols as the reference reader knows them (its list predates the names of 113, 115,
/// 117 and 118, and keeps their placeholders).
const ELEMENTS: [&str; 118] = [
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl",
    "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As",
    "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In",
    "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb",
    "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl",
    "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk",
    "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn",
    "Uut", "Fl", "Uup", "Lv", "Uus", "Uuo",
];

/// `# Column.N: name unit` lines.
fn column_lines(text: &mut String, columns: &[Column<'_>]) {
    for (i, column) in columns.iter().enumerate() {
        let _ = write!(text, "# Column.{}: {}", i + 1, column.name);
        if !column.unit.is_empty() {
            let _ = write!(text, " {}", column.unit);
        }
        text.push('\n');
    }
}

/// The names line and the rows.
fn write_table(text: &mut String, columns: &[Column<'_>], rows: usize) {
    text.push('#');
    for column in columns {
        text.push(' ');
        text.push_str(column.name);
    }
    text.push('\n');
    for row in 0..rows {
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                text.push(' ');
            }
            write_number(text, column.values[row]);
        }
        text.push('\n');
    }
}

/// The shortest text that reads back to `v`, bit for bit (but for NaN's payload).
fn write_number(text: &mut String, v: f64) {
    // Rust's `{}` and `{:e}` both print the shortest digits that round-trip; `{}` never uses an
    // exponent, so 1e-300 would take 300 characters: outside everyday magnitudes, `{:e}`.
    let _ = if v.is_nan() {
        write!(text, "nan")
    } else if v.is_infinite() {
        write!(text, "{}", if v > 0.0 { "inf" } else { "-inf" })
    } else if v == 0.0 || (1e-5..1e16).contains(&v.abs()) {
        write!(text, "{v}")
    } else {
        write!(text, "{v:e}")
    };
}

/// Temporary files in one process get distinct names.
static TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// Writes `text` to `folder/name` through a temporary name and a rename, so a crash never
/// leaves a half file under the final name; refuses names with '/', '..', control characters.
///
/// The folder is made if missing; a file already there under `name` is replaced. The file's
/// data is flushed to disk before the rename, the folder after it (where the system allows).
pub fn write_atomically(folder: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, ColumnError> {
    check_file_name(name)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ColumnError::Io { path, source }
    };
    std::fs::create_dir_all(folder).map_err(io(folder))?;
    let path = folder.join(name);
    let temporary = folder.join(format!(
        ".beamflow-{}-{}.tmp",
        std::process::id(),
        TEMPORARY.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::File::create_new(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    if let Err(source) = written {
        // Best effort: the error to report is the write's, not the clean-up's.
        let _ = std::fs::remove_file(&temporary);
        return Err(ColumnError::Io { path, source });
    }
    // The rename is durable once the folder is synced; not every system opens a folder.
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(path)
}

/// Longer names are refused by most file systems.
const MAX_NAME_BYTES: usize = 255;

fn check_file_name(name: &str) -> Result<(), ColumnError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name.contains("..") || name == "." {
        Some("contains '..' or is '.'")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else if name.len() > MAX_NAME_BYTES {
        Some("longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ColumnError::FileName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column<'a>(name: &'a str, unit: &'a str, values: &'a [f64]) -> Column<'a> {
        Column { name, unit, values }
    }

    /// Values whose shortest text is tricky: the ends of f64, subnormals, 0.1-like decimals,
    /// the switch between `{}` and `{:e}`.
    const AWKWARD: [f64; 16] = [
        0.1,
        -0.0,
        1.0 / 3.0,
        5e-324,
        2.2250738585072014e-308,
        f64::MAX,
        f64::MIN,
        1e16,
        9999999999999998.0,
        1e-5,
        9.999999999999999e-6,
        123456.789e3,
        f64::EPSILON,
        0.30000000000000004,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];

    /// An XAFS scan's columns: energy in eV and three signals.
    fn xafs() -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let energy: Vec<f64> = (0..40).map(|i| 8950.0 + 2.5 * f64::from(i) + 0.1).collect();
        let i0: Vec<f64> = energy
            .iter()
            .map(|e| 1.5e5 + (e - 8950.0).sin() * 1e3)
            .collect();
        let it: Vec<f64> = energy
            .iter()
            .zip(&i0)
            .map(|(e, i0)| i0 * (-(1.0 + (e - 8979.0).atan())).exp())
            .collect();
        let mu: Vec<f64> = i0.iter().zip(&it).map(|(i0, it)| (i0 / it).ln()).collect();
        (energy, i0, it, mu)
    }

    fn xdi_fields() -> Vec<(&'static str, String)> {
        vec![
            ("Element.symbol", "Cu".to_owned()),
            ("Element.edge", "K".to_owned()),
            ("Mono.d_spacing", "3.1356".to_owned()),
            ("Mono.name", "Si(111)".to_owned()),
            ("Scan.start_time", "2026-11-30T17:35:12".to_owned()),
            ("Facility.name", "NSLS-II".to_owned()),
            ("Beamline.name", "BMM (6-BM)".to_owned()),
            ("Beamflow.run_uid", "4a0c6b6e-0b0e-4f7a".to_owned()),
        ]
    }

    #[test]
    fn column_text_has_its_header_names_and_shortest_round_trip_numbers() {
        let x = [1.0, 2.5, 1e-7];
        let y = [f64::NAN, -0.0, 1e300];
        let text = column_text(
            &[
                ("scan_id", "42".to_owned()),
                ("plan_name", "rel_scan".to_owned()),
            ],
            &[column("x", "mm", &x), column("det", "", &y)],
        )
        .unwrap();
        insta::assert_snapshot!(text, @r"
        # scan_id: 42
        # plan_name: rel_scan
        # Column.1: x mm
        # Column.2: det
        # x det
        1 nan
        2.5 -0
        1e-7 1e300
        ");

        let mut text = String::new();
        for v in AWKWARD {
            text.clear();
            write_number(&mut text, v);
            let back: f64 = text.parse().unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{v:e} written as {text}");
            assert!(text.len() <= 24, "{text}");
        }
        // A deterministic spread over every exponent.
        let mut bits: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            bits = bits
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = f64::from_bits(bits);
            if v.is_nan() {
                continue;
            }
            text.clear();
            write_number(&mut text, v);
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn column_text_refuses_what_would_break_its_lines() {
        let one = [1.0];
        let two = [1.0, 2.0];
        let text = |header: &[(&str, String)], columns: &[Column<'_>]| {
            column_text(header, columns).unwrap_err().to_string()
        };
        insta::assert_snapshot!(text(&[], &[]), @"a column file needs at least one column");
        insta::assert_snapshot!(text(&[], &[column("a", "", &one), column("b", "", &two)]), @r#"column "b" has 2 values but column "a" has 1"#);
        insta::assert_snapshot!(text(&[], &[column("It / I0", "", &one)]), @r#"column name "It / I0": not one word (whitespace or a control character)"#);
        insta::assert_snapshot!(text(&[], &[column("#x", "", &one)]), @r##"column name "#x": starts with the comment sign"##);
        insta::assert_snapshot!(text(&[], &[column("x", "m m", &one)]), @r#"unit "m m" of column "x": not one word (whitespace or a control character)"#);
        insta::assert_snapshot!(text(&[("a:b", String::new())], &[column("x", "", &one)]), @r#"header "a:b": the key contains ':', which ends it"#);
        insta::assert_snapshot!(text(&[("sample", "Cu\nfoil".to_owned())], &[column("x", "", &one)]), @r#"header "sample": a control character (a line break?) in the key or value"#);
        // No rows is a header.
        let empty = column_text(&[], &[column("x", "", &[])]).unwrap();
        assert_eq!(empty, "# Column.1: x\n# x\n");
    }

    #[test]
    fn xdi_is_the_spec_layout() {
        let energy = [8979.0, 8980.5, 8982.0];
        let mu = [0.25, 1.5, 1.25];
        let fields = xdi_fields();
        let text = xdi(
            &XdiFields {
                fields: &fields[..3],
                comments: &["Cu foil, room temperature", ""],
            },
            &[column("energy", "eV", &energy), column("mutrans", "", &mu)],
        )
        .unwrap();
        let text = text.replace(env!("CARGO_PKG_VERSION"), "VERSION");
        insta::assert_snapshot!(text, @r"
        # XDI/1.0 beamflow/VERSION
        # Column.1: energy eV
        # Column.2: mutrans
        # Element.symbol: Cu
        # Element.edge: K
        # Mono.d_spacing: 3.1356
        # ///
        # Cu foil, room temperature
        # 
        #----
        # energy mutrans
        8979 0.25
        8980.5 1.5
        8982 1.25
        ");
    }

    #[test]
    fn xdi_refuses_what_the_spec_or_its_reference_reader_refuses() {
        let (energy, i0, ..) = xafs();
        let angle: Vec<f64> = energy.iter().map(|e| e / 1000.0).collect();
        let good = xdi_fields();
        let columns = [column("energy", "eV", &energy), column("i0", "", &i0)];
        let with = |name: &'static str, value: &str| {
            let mut fields = good.clone();
            fields.push((name, value.to_owned()));
            xdi(
                &XdiFields {
                    fields: &fields,
                    comments: &[],
                },
                &columns,
            )
            .unwrap_err()
            .to_string()
        };
        let refused = |fields: &[(&str, String)], comments: &[&str], columns: &[Column<'_>]| {
            xdi(&XdiFields { fields, comments }, columns)
                .unwrap_err()
                .to_string()
        };
        assert!(
            xdi(
                &XdiFields {
                    fields: &good,
                    comments: &[]
                },
                &columns
            )
            .is_ok()
        );

        insta::assert_snapshot!(with("Sample", "x"), @r#"XDI field "Sample": not Family.key"#);
        insta::assert_snapshot!(with("Sample.prep-note", "x"), @r#"XDI field "Sample.prep-note": the key is letters, digits or '_' (one dot only)"#);
        insta::assert_snapshot!(with("Sample.a.b", "x"), @r#"XDI field "Sample.a.b": the key is letters, digits or '_' (one dot only)"#);
        insta::assert_snapshot!(with("2theta.x", "x"), @r#"XDI field "2theta.x": the family is a letter then letters, digits or '_', two characters or more"#);
        insta::assert_snapshot!(with("S.x", "x"), @r#"XDI field "S.x": the family is a letter then letters, digits or '_', two characters or more"#);
        insta::assert_snapshot!(with("column.3", "x"), @r#"XDI field "column.3": Column.N fields come from the columns"#);
        insta::assert_snapshot!(with("element.SYMBOL", "Fe"), @r#"XDI field "element.SYMBOL": given twice (field names ignore case)"#);
        insta::assert_snapshot!(with("Sample.name", "a\nb"), @r#"XDI field "Sample.name": a control character (a line break?) in the value"#);
        insta::assert_snapshot!(with("Scan.end_time", "30/11/2026 17:35"), @r#"XDI field "Scan.end_time": "30/11/2026 17:35" is not ISO 8601 with seconds, e.g. 2026-11-30T17:35:12"#);
        insta::assert_snapshot!(with("Scan.end_time", "2026-02-30T17:35:12"), @r#"XDI field "Scan.end_time": "2026-02-30T17:35:12" is not ISO 8601 with seconds, e.g. 2026-11-30T17:35:12"#);
        assert!(
            xdi(
                &XdiFields {
                    fields: &[
                        ("Element.symbol", "Fe".to_owned()),
                        ("Element.edge", "L3".to_owned()),
                        ("Scan.end_time", "2026-11-30 17:35:12.25+01:00".to_owned()),
                    ],
                    comments: &[],
                },
                &columns
            )
            .is_ok()
        );

        insta::assert_snapshot!(refused(&good[1..], &[], &columns), @"XDI needs the field Element.symbol");
        insta::assert_snapshot!(refused(&good[..1], &[], &columns), @"XDI needs the field Element.edge");
        let mut bad_element = good.clone();
        bad_element[0].1 = "Cuu".to_owned();
        insta::assert_snapshot!(refused(&bad_element, &[], &columns), @r#"XDI field "Element.symbol": "Cuu" is not an element symbol"#);
        let mut bad_edge = good.clone();
        bad_edge[1].1 = "K1".to_owned();
        insta::assert_snapshot!(refused(&bad_edge, &[], &columns), @r#"XDI field "Element.edge": "K1" is not an edge: K, L, L1, L2, L3, M, M1, M2, M3, M4, M5, N, N1, N2, N3, N4, N5, N6, N7, O, O1, O2, O3, O4, O5, O6, O7"#);
        let mut bad_spacing = good.clone();
        bad_spacing[2].1 = "3.1356 A".to_owned();
        insta::assert_snapshot!(refused(&bad_spacing, &[], &columns), @r#"XDI field "Mono.d_spacing": "3.1356 A" is not a positive number (in Å, without the unit)"#);
        let by_angle = [column("angle", "deg", &angle), column("i0", "", &i0)];
        insta::assert_snapshot!(refused(&good[..2], &[], &by_angle), @"XDI needs the field Mono.d_spacing");
        assert!(
            xdi(
                &XdiFields {
                    fields: &good,
                    comments: &[]
                },
                &by_angle
            )
            .is_ok()
        );

        insta::assert_snapshot!(refused(&good, &[], &[column("time", "s", &energy), column("i0", "", &i0)]), @r#"XDI's first column must be energy or angle, with its unit; got "time" "s""#);
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "", &energy), column("i0", "", &i0)]), @r#"XDI's first column must be energy or angle, with its unit; got "energy" """#);
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "eV", &energy), column("It_I0", "", &i0[..3])]), @r#"column "It_I0" has 3 values but column "energy" has 40"#);
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "eV", &energy), column("It/I0", "", &i0)]), @r#"column name "It/I0": an XDI label has only letters, digits and '_' (It/I0 could be It_I0)"#);
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "eV", &energy[..2]), column("i0", "", &i0[..2])]), @"XDI with 2 columns and 2 rows: the reference reader needs 2 to 128 columns and at least 3 rows");
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "eV", &energy)]), @"XDI with 1 columns and 40 rows: the reference reader needs 2 to 128 columns and at least 3 rows");
        let mut holes = i0.clone();
        holes[7] = f64::NAN;
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "eV", &energy), column("i0", "", &holes)]), @r#"XDI column "i0" row 7: NaN cannot be read back (the reference reader takes no NaN)"#);
        let mut negative = energy.clone();
        negative[0] = -0.0;
        insta::assert_snapshot!(refused(&good, &[], &[column("energy", "eV", &negative), column("i0", "", &i0)]), @r#"XDI column "energy" row 0: -0 cannot be read back (the first column must be finite and not negative)"#);
        insta::assert_snapshot!(refused(&good, &["--- end of sample notes"], &columns), @r#"XDI comment "--- end of sample notes": would be read as the end of the fields or of the header"#);
        insta::assert_snapshot!(refused(&good, &["two\nlines"], &columns), @r#"XDI comment "two\nlines": a control character (a line break?)"#);
    }

    #[test]
    fn files_are_written_whole_under_plain_names_only() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("snapshots");
        let path = write_atomically(&folder, "scan_4711.xdi", b"first").unwrap();
        assert_eq!(path, folder.join("scan_4711.xdi"));
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomically(&folder, "scan_4711.xdi", b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["scan_4711.xdi"], "no temporary file left");

        for (name, reason) in [
            ("", "empty"),
            ("../up.png", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("..", "contains '..' or is '.'"),
            ("x..png", "contains '..' or is '.'"),
            (".", "contains '..' or is '.'"),
            ("a\nb.png", "contains a control character"),
            ("nul\0.png", "contains a control character"),
        ] {
            match write_atomically(&folder, name, b"x") {
                Err(ColumnError::FileName { reason: r, .. }) => assert_eq!(r, reason, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        assert!(write_atomically(&folder, &"x".repeat(256), b"x").is_err());
        // A folder that is a file: the error names it.
        let file = folder.join("scan_4711.xdi");
        let error = write_atomically(&file, "a.png", b"x").unwrap_err();
        assert!(
            matches!(&error, ColumnError::Io { path, .. } if *path == file),
            "{error}"
        );
    }

    /// Reads what this module writes with readers nobody here wrote: `numpy.loadtxt` for the
    /// plain file, and for XDI the reference C library (`libxdifile`, shipped inside PyPI's
    /// `xraylarch`, loaded with ctypes so none of Larch's dependencies is needed). The Python is
    /// `$BEAMFLOW_PYTHON`, else the repository's `.venv`; without it (or without numpy and
    /// xraylarch) the check is skipped, except under CI, where it must run.
    #[test]
    fn numpy_and_the_reference_xdi_reader_read_back_every_bit() {
        let dir = tempfile::tempdir().unwrap();
        let (energy, i0, it, mu) = xafs();
        let mut awkward: Vec<f64> = AWKWARD.to_vec();
        awkward.extend([f64::NAN; 2]);
        let mut spread: Vec<f64> = (0..i0.len() - awkward.len())
            .map(|i| f64::from_bits(0x3FF0_0000_0000_0001 + (i as u64) * 0x0123_4567_89AB))
            .collect();
        awkward.append(&mut spread);
        let plain_columns = [
            column("energy", "eV", &energy),
            column("awkward", "", &awkward),
            column("mu_t", "", &mu),
        ];
        let plain = column_text(&[("plan_name", "scan".to_owned())], &plain_columns).unwrap();
        let xdi_columns = [
            column("energy", "eV", &energy),
            column("i0", "", &i0),
            column("itrans", "", &it),
            column("mutrans", "", &mu),
        ];
        let fields = xdi_fields();
        let comments = ["Cu foil: a comment with a colon", "", "  indented"];
        let xdi_text = xdi(
            &XdiFields {
                fields: &fields,
                comments: &comments,
            },
            &xdi_columns,
        )
        .unwrap();
        let plain_path = write_atomically(dir.path(), "scan.txt", plain.as_bytes()).unwrap();
        let xdi_path = write_atomically(dir.path(), "scan.xdi", xdi_text.as_bytes()).unwrap();
        let bits = |columns: &[Column<'_>]| {
            columns
                .iter()
                .map(|c| {
                    (
                        c.name.to_owned(),
                        c.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let expected = serde_json::json!({
            "plain": bits(&plain_columns),
            "xdi": bits(&xdi_columns),
            "units": xdi_columns.iter().map(|c| c.unit).collect::<Vec<_>>(),
            "fields": fields,
            "comments": comments,
        });
        let expected_path = dir.path().join("expected.json");
        std::fs::write(&expected_path, expected.to_string()).unwrap();
        let Some(stdout) = crate::reference::run(
            READ_BACK,
            &[&plain_path, &xdi_path, &expected_path],
            &xdi_text,
        ) else {
            return;
        };
        assert!(stdout.contains("read back"), "{stdout}");
        eprintln!("{stdout}");
    }

    /// Reads the plain file with numpy, the XDI file with libxdifile, and compares bits.
    const READ_BACK: &str = r##"
import ctypes, importlib.util, json, math, os, struct, sys
try:
    import numpy as np
except ImportError:
    print("numpy is not installed"); sys.exit(77)
spec = importlib.util.find_spec("larch")
lib_path = spec and os.path.join(spec.submodule_search_locations[0], "bin", "linux64", "libxdifile.so")
if not lib_path or not os.path.exists(lib_path):
    print("xraylarch (for its libxdifile) is not installed"); sys.exit(77)

plain_path, xdi_path, expected_path = sys.argv[1:4]
expected = json.load(open(expected_path))

def same(name, got, want_bits):
    assert len(got) == len(want_bits), (name, len(got), len(want_bits))
    for row, (value, bits) in enumerate(zip(got, want_bits)):
        want = struct.unpack("<d", struct.pack("<Q", bits))[0]
        if math.isnan(want):
            assert math.isnan(value), (name, row, value)
        else:
            got_bits = struct.unpack("<Q", struct.pack("<d", value))[0]
            assert got_bits == bits, (name, row, value, want)

table = np.loadtxt(plain_path, ndmin=2)
names = [l for l in open(plain_path) if l.startswith("#")][-1][1:].split()
assert names == [n for n, _ in expected["plain"]], names
for i, (name, bits) in enumerate(expected["plain"]):
    same(name, table[:, i].tolist(), bits)

L, D, S, P = ctypes.c_long, ctypes.c_double, ctypes.c_char_p, ctypes.c_void_p
class XDIFile(ctypes.Structure):
    _fields_ = ([(n, L) for n in ("nmetadata", "narrays", "npts", "narray_labels", "nouter", "error_lineno")]
        + [("dspacing", D)]
        + [(n, S) for n in ("xdi_libversion", "xdi_version", "extra_version", "filename", "element",
                            "edge", "comments", "error_line", "error_message")]
        + [("array_labels", P), ("outer_label", S), ("array_units", P), ("meta_families", P),
           ("meta_keywords", P), ("meta_values", P), ("array", P), ("outer_array", P), ("outer_breakpts", P)])
lib = ctypes.CDLL(lib_path)
lib.XDI_errorstring.restype = S
xdi = XDIFile()
status = lib.XDI_readfile(xdi_path.encode(), ctypes.byref(xdi))
assert status == 0, (status, lib.XDI_errorstring(status), xdi.error_line, xdi.error_message)
assert lib.XDI_required_metadata(ctypes.byref(xdi)) == 0, xdi.error_message
strings = lambda address, n: [s.decode() for s in (S * n).from_address(address)[:]]
labels = strings(xdi.array_labels, xdi.narrays)
assert labels == [n for n, _ in expected["xdi"]], labels
assert strings(xdi.array_units, xdi.narrays) == expected["units"]
assert (xdi.element.decode().strip(), xdi.edge.decode().strip()) == ("Cu", "K")
assert xdi.extra_version.decode().startswith("beamflow/"), xdi.extra_version
columns = [(D * xdi.npts).from_address(p)[:] for p in (P * xdi.narrays).from_address(xdi.array)[:]]
for (name, bits), values in zip(expected["xdi"], columns):
    same(name, values, bits)
n = xdi.nmetadata
read = list(zip(strings(xdi.meta_families, n), strings(xdi.meta_keywords, n), strings(xdi.meta_values, n)))
for (family, key, value) in read:
    if family.lower() == "column":
        continue
    code = lib.XDI_validate_item(ctypes.byref(xdi), family.encode(), key.encode(), value.encode())
    # 0, or for an extension family only "extension field used without versioning information",
    # which the reader says of any family it does not define.
    assert code == 0 or family == "Beamflow", (family, key, value, code, xdi.error_message)
given = [(f.split(".")[0], f.split(".")[1], v) for f, v in expected["fields"]]
assert [r for r in read if r[0].lower() != "column"] == given, read
comments = xdi.comments.decode().split("\n")
# libxdifile drops empty comment lines and cuts each at its first ':' (the spec keeps both).
want = [c.split(":")[0].strip() for c in expected["comments"] if c.strip()]
assert [c.strip() for c in comments if c.strip()] == want, comments
print(f"read back: {table.shape[0]} plain rows with numpy {np.__version__}, "
      f"{xdi.npts} XDI rows with libxdifile {xdi.xdi_libversion.decode()}")
"##;
}
