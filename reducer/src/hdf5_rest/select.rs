//! HDF5-REST selections (`select=[a:b:s, i, [j, k]]`), as h5pyd sends them, applied to a
//! row-major array with numpy's clamping: what `GET /datasets/{id}/value` answers.

/// One dimension of a selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// `start:stop:step`, already clamped to the extent (`stop` may equal `start`: empty).
    Range {
        /// First index.
        start: usize,
        /// One past the last index considered.
        stop: usize,
        /// At least 1.
        step: usize,
    },
    /// One index: the dimension is dropped from the result's shape.
    Index(usize),
    /// A list of indices (h5pyd's fancy selection), each within the extent.
    List(Vec<usize>),
}

impl Dim {
    /// The indices it picks, in order.
    fn indices(&self) -> Vec<usize> {
        match self {
            Dim::Range { start, stop, step } => (*start..*stop).step_by(*step).collect(),
            Dim::Index(i) => vec![*i],
            Dim::List(list) => list.clone(),
        }
    }

    /// Its length in the result's shape, `None` when the dimension is dropped.
    fn len(&self) -> Option<usize> {
        match self {
            Dim::Range { start, stop, step } => Some((stop - start).div_ceil(*step)),
            Dim::Index(_) => None,
            Dim::List(list) => Some(list.len()),
        }
    }
}

/// A selection that cannot apply to the dataset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// Not the `[dim, dim, ...]` grammar.
    #[error("select {select:?}: {why}")]
    Syntax {
        /// The selection as sent.
        select: String,
        /// What is wrong with it.
        why: String,
    },
    /// More or fewer dimensions than the dataset has.
    #[error("select has {given} dimensions, the dataset {rank}")]
    Rank {
        /// Dimensions in the selection.
        given: usize,
        /// Dimensions of the dataset.
        rank: usize,
    },
    /// An index past the extent.
    #[error("index {index} is out of range for a dimension of {extent}")]
    OutOfRange {
        /// The index.
        index: usize,
        /// The dimension's extent.
        extent: usize,
    },
}

/// Parses `select` (`[0:5, 2, [1,4]]`, brackets optional) against a dataset of `shape`.
pub fn parse(select: &str, shape: &[usize]) -> Result<Vec<Dim>, SelectError> {
    let syntax = |why: &str| SelectError::Syntax {
        select: select.to_owned(),
        why: why.to_owned(),
    };
    let text = select.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let parts = split_top_level(text).ok_or_else(|| syntax("unbalanced brackets"))?;
    if parts.len() != shape.len() {
        return Err(SelectError::Rank {
            given: parts.len(),
            rank: shape.len(),
        });
    }
    parts
        .iter()
        .zip(shape)
        .map(|(part, &extent)| {
            dim(part.trim(), extent).map_err(|why| match why {
                DimError::Syntax(why) => syntax(&why),
                DimError::OutOfRange(index) => SelectError::OutOfRange { index, extent },
            })
        })
        .collect()
}

enum DimError {
    Syntax(String),
    OutOfRange(usize),
}

fn number(text: &str) -> Result<i64, DimError> {
    text.trim()
        .parse()
        .map_err(|_| DimError::Syntax(format!("{text:?} is not an integer")))
}

/// numpy's clamping of a slice bound (a negative one counts from the end).
fn clamp(bound: i64, extent: usize) -> usize {
    let extent = extent as i64;
    let bound = if bound < 0 { bound + extent } else { bound };
    bound.clamp(0, extent) as usize
}

fn index(text: &str, extent: usize) -> Result<usize, DimError> {
    let i = number(text)?;
    let resolved = if i < 0 { i + extent as i64 } else { i };
    usize::try_from(resolved)
        .ok()
        .filter(|&i| i < extent)
        .ok_or(DimError::OutOfRange(i.unsigned_abs() as usize))
}

fn dim(part: &str, extent: usize) -> Result<Dim, DimError> {
    if let Some(list) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
        return list
            .split(',')
            .filter(|item| !item.trim().is_empty())
            .map(|item| index(item, extent))
            .collect::<Result<_, _>>()
            .map(Dim::List);
    }
    if !part.contains(':') {
        return index(part, extent).map(Dim::Index);
    }
    let mut fields = part.split(':');
    let mut bound = |default: i64| -> Result<i64, DimError> {
        match fields.next().map(str::trim) {
            None | Some("") => Ok(default),
            Some(text) => number(text),
        }
    };
    let start = bound(0)?;
    let stop = bound(extent as i64)?;
    let step = bound(1)?;
    if fields.next().is_some() {
        return Err(DimError::Syntax(format!(
            "{part:?} has more than start:stop:step"
        )));
    }
    let step = usize::try_from(step)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| DimError::Syntax(format!("step {step} must be positive")))?;
    let start = clamp(start, extent);
    let stop = clamp(stop, extent).max(start);
    Ok(Dim::Range { start, stop, step })
}

/// Splits at the commas outside `[...]`; `None` when brackets do not balance.
fn split_top_level(text: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut from = 0;
    for (at, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                parts.push(&text[from..at]);
                from = at + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    if !text[from..].trim().is_empty() || !parts.is_empty() {
        parts.push(&text[from..]);
    }
    Some(parts)
}

/// The selected elements of a row-major array of `shape` with `size`-byte elements, in order,
/// and the result's shape. Bounded by the array: nothing is allocated beyond what is copied.
pub fn gather(
    data: &[u8],
    size: usize,
    shape: &[usize],
    selection: &[Dim],
) -> (Vec<u8>, Vec<usize>) {
    let result_shape: Vec<usize> = selection.iter().filter_map(Dim::len).collect();
    let picks: Vec<Vec<usize>> = selection.iter().map(Dim::indices).collect();
    let count: usize = picks.iter().map(Vec::len).product();
    let mut out = Vec::with_capacity(count.saturating_mul(size).min(data.len()));
    if count == 0 {
        return (out, result_shape);
    }
    // Row-major strides in elements.
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let mut cursor = vec![0usize; picks.len()];
    loop {
        let offset: usize = cursor
            .iter()
            .enumerate()
            .map(|(d, &k)| picks[d][k] * strides[d])
            .sum::<usize>()
            * size;
        if let Some(element) = data.get(offset..offset + size) {
            out.extend_from_slice(element);
        }
        // Advance the last dimension first (odometer).
        let mut d = picks.len();
        loop {
            if d == 0 {
                return (out, result_shape);
            }
            d -= 1;
            cursor[d] += 1;
            if cursor[d] < picks[d].len() {
                break;
            }
            cursor[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// A 3×4 array holding 0..12.
    fn grid() -> Vec<u8> {
        (0u16..12).flat_map(u16::to_le_bytes).collect()
    }

    fn pick(select: &str) -> (Vec<u16>, Vec<usize>) {
        let selection = parse(select, &[3, 4]).unwrap();
        let (bytes, shape) = gather(&grid(), 2, &[3, 4], &selection);
        (u16s(&bytes), shape)
    }

    #[test]
    fn selections_answer_as_numpy_does() {
        // numpy: a = np.arange(12).reshape(3, 4)
        assert_eq!(pick("[0:3:1,0:4:1]"), ((0..12).collect(), vec![3, 4]));
        assert_eq!(pick("[1:3,1:4:2]"), (vec![5, 7, 9, 11], vec![2, 2])); // a[1:3, 1:4:2]
        assert_eq!(pick("[1:9,2:11:3]"), (vec![6, 10], vec![2, 1])); // stops past the extent clamp
        assert_eq!(pick("[2,0:4]"), (vec![8, 9, 10, 11], vec![4])); // an index drops its dimension
        assert_eq!(pick("[0:3,[1,3]]"), (vec![1, 3, 5, 7, 9, 11], vec![3, 2])); // a[:, [1, 3]]
        assert_eq!(pick("[-1,-2]"), (vec![10], vec![])); // a[-1, -2]
        assert_eq!(pick("[2:1,0:4]"), (vec![], vec![0, 4])); // empty
    }

    #[test]
    fn a_selection_that_cannot_apply_is_an_error_naming_why() {
        assert_eq!(
            parse("[0:3]", &[3, 4]),
            Err(SelectError::Rank { given: 1, rank: 2 })
        );
        assert_eq!(
            parse("[3,0]", &[3, 4]),
            Err(SelectError::OutOfRange {
                index: 3,
                extent: 3
            })
        );
        for bad in ["[a:3,0]", "[0:3:0,0]", "[[0,1,0]", "[0:1:2:3,0]"] {
            assert!(
                matches!(parse(bad, &[3, 4]), Err(SelectError::Syntax { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_scalar_has_an_empty_selection() {
        let selection = parse("[]", &[]).unwrap();
        assert!(selection.is_empty());
        let (bytes, shape) = gather(&7u16.to_le_bytes(), 2, &[], &selection);
        assert_eq!((u16s(&bytes), shape), (vec![7], vec![]));
    }
}
