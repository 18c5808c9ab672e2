//! pvRequest: what an operation asks for. A client writes it as text (`field(value,alarm)`,
//! `record[queueSize=4,pipeline=true]field()`) and sends it as a structure; a server reads the
//! structure back ([`Request`]) and serves the selected members ([`Selection`]).

use std::sync::Arc;

use crate::PvaError;
use crate::pvdata::{BitSet, FieldDesc, PvStructure, ScalarType, StructDesc, Value};

/// A parsed pvRequest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// The member paths asked for; empty: all of them.
    pub fields: Vec<String>,
    /// `record[queueSize=N]`: updates a monitor may hold for the client.
    pub queue_size: Option<usize>,
    /// `record[pipeline=true]`: the client acknowledges updates; the server sends at most
    /// `queue_size` unacknowledged ones.
    pub pipeline: bool,
}

/// A selection tree: everything below, or some members.
#[derive(Debug, Clone, PartialEq)]
enum Pick {
    All,
    Members(Vec<(String, Pick)>),
}

impl Request {
    /// Parses the text form: `field(a,b.c)`, optionally with `record[key=value,...]`; bare
    /// `a,b` means `field(a,b)`.
    pub fn parse(text: &str) -> Result<Self, PvaError> {
        let bad = |why: &'static str| PvaError::BadRequest(format!("{why}: {text:?}"));
        let mut request = Self::default();
        let mut rest = text.trim();
        if !rest.is_empty() && !rest.starts_with("field(") && !rest.starts_with("record[") {
            request.fields = split_fields(rest);
            return Ok(request);
        }
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("record[") {
                let close = after.find(']').ok_or_else(|| bad("unclosed record["))?;
                for option in after[..close].split(',').filter(|o| !o.trim().is_empty()) {
                    let (key, value) = option
                        .split_once('=')
                        .ok_or_else(|| bad("option without ="))?;
                    request.option(key.trim(), value.trim());
                }
                rest = after[close + 1..].trim_start();
            } else if let Some(after) = rest.strip_prefix("field(") {
                let close = after.find(')').ok_or_else(|| bad("unclosed field("))?;
                request.fields.extend(split_fields(&after[..close]));
                rest = after[close + 1..].trim_start();
            } else {
                return Err(bad("expected field(...) or record[...]"));
            }
        }
        Ok(request)
    }

    fn option(&mut self, key: &str, value: &str) {
        match key {
            "queueSize" => self.queue_size = value.parse().ok(),
            "pipeline" => self.pipeline = value == "true" || value == "1",
            _ => {}
        }
    }

    /// The structure a client sends.
    pub fn to_pv(&self) -> PvStructure {
        let mut tree = Pick::Members(Vec::new());
        for path in &self.fields {
            insert(&mut tree, path);
        }
        let (field_desc, field_value) = tree_to_structure(&tree);
        let mut options = Vec::new();
        if let Some(n) = self.queue_size {
            options.push(("queueSize", n.to_string()));
        }
        if self.pipeline {
            options.push(("pipeline", "true".to_owned()));
        }
        let mut members = vec![("field", field_desc)];
        let mut values = vec![field_value];
        if !options.is_empty() {
            let options_desc = FieldDesc::structure(
                "",
                options
                    .iter()
                    .map(|(k, _)| (*k, FieldDesc::Scalar(ScalarType::String)))
                    .collect(),
            );
            members.push((
                "record",
                FieldDesc::structure("", vec![("_options", options_desc)]),
            ));
            values.push(Value::Structure(vec![Value::Structure(
                options.into_iter().map(|(_, v)| Value::String(v)).collect(),
            )]));
        }
        PvStructure {
            desc: Arc::new(StructDesc::new("", members)),
            fields: values,
        }
    }

    /// Reads the structure a client sent (options as strings, numbers or booleans).
    pub fn from_pv(pv: &PvStructure) -> Self {
        let mut request = Self::default();
        if let Some((FieldDesc::Structure(desc), Value::Structure(values))) = pv.get("field") {
            collect_paths(desc, values, "", &mut request.fields);
        }
        if let Some((FieldDesc::Structure(desc), Value::Structure(values))) =
            pv.get("record._options")
        {
            for ((key, _), value) in desc.fields.iter().zip(values) {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Boolean(b) => b.to_string(),
                    other => other.as_i64().map(|i| i.to_string()).unwrap_or_default(),
                };
                request.option(key, &text);
            }
        }
        request
    }

    /// What of `desc` this request selects; an error if it names members and none exists.
    pub fn select(&self, desc: &Arc<StructDesc>) -> Result<Selection, PvaError> {
        let mut tree = Pick::Members(Vec::new());
        for path in &self.fields {
            insert(&mut tree, path);
        }
        if matches!(&tree, Pick::Members(m) if m.is_empty()) {
            tree = Pick::All;
        }
        let pick = resolve(desc, &tree);
        match pick {
            Some(pick) => Ok(Selection {
                desc: select_desc(desc, &pick),
                pick,
                full: Arc::clone(desc),
            }),
            None => Err(PvaError::BadRequest(format!(
                "no member of {:?} among {:?}",
                desc.id, self.fields
            ))),
        }
    }
}

fn split_fields(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

fn insert(tree: &mut Pick, path: &str) {
    let mut node = tree;
    for name in path.split('.').filter(|n| !n.is_empty()) {
        let Pick::Members(members) = node else {
            return;
        };
        let index = match members.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                members.push((name.to_owned(), Pick::Members(Vec::new())));
                members.len() - 1
            }
        };
        node = &mut members[index].1;
    }
}

fn tree_to_structure(tree: &Pick) -> (FieldDesc, Value) {
    let members = match tree {
        Pick::All => Vec::new(),
        Pick::Members(members) => members
            .iter()
            .map(|(n, p)| (n, tree_to_structure(p)))
            .collect(),
    };
    let desc = StructDesc {
        id: String::new(),
        fields: members
            .iter()
            .map(|(n, (d, _))| ((*n).clone(), d.clone()))
            .collect(),
    };
    let values = members.into_iter().map(|(_, (_, v))| v).collect();
    (
        FieldDesc::Structure(Arc::new(desc)),
        Value::Structure(values),
    )
}

fn collect_paths(desc: &StructDesc, values: &[Value], prefix: &str, out: &mut Vec<String>) {
    for ((name, member), value) in desc.fields.iter().zip(values) {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (member, value) {
            (FieldDesc::Structure(inner), Value::Structure(inner_values))
                if !inner.fields.is_empty() =>
            {
                collect_paths(inner, inner_values, &path, out);
            }
            _ => out.push(path),
        }
    }
}

/// A selection resolved against a type: indices into its members.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    All,
    Members(Vec<(usize, Resolved)>),
}

fn resolve(desc: &StructDesc, tree: &Pick) -> Option<Resolved> {
    match tree {
        Pick::All => Some(Resolved::All),
        Pick::Members(members) => {
            let picked: Vec<(usize, Resolved)> = desc
                .fields
                .iter()
                .enumerate()
                .filter_map(|(index, (name, member))| {
                    let (_, sub) = members.iter().find(|(n, _)| n == name)?;
                    let sub = match (member, sub) {
                        (_, Pick::Members(m)) if m.is_empty() => Resolved::All,
                        (FieldDesc::Structure(inner), sub) => resolve(inner, sub)?,
                        _ => Resolved::All,
                    };
                    Some((index, sub))
                })
                .collect();
            (!picked.is_empty()).then_some(Resolved::Members(picked))
        }
    }
}

fn select_desc(desc: &Arc<StructDesc>, pick: &Resolved) -> Arc<StructDesc> {
    match pick {
        Resolved::All => Arc::clone(desc),
        Resolved::Members(members) => Arc::new(StructDesc {
            id: desc.id.clone(),
            fields: members
                .iter()
                .map(|(index, sub)| {
                    let (name, member) = &desc.fields[*index];
                    let member = match (member, sub) {
                        (FieldDesc::Structure(inner), Resolved::Members(_)) => {
                            FieldDesc::Structure(select_desc(inner, sub))
                        }
                        _ => member.clone(),
                    };
                    (name.clone(), member)
                })
                .collect(),
        }),
    }
}

/// The members of a PV's type a request selected: the type served, and how a full value and
/// its change marks map onto it.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The type the client is told of.
    pub desc: Arc<StructDesc>,
    pick: Resolved,
    full: Arc<StructDesc>,
}

impl Selection {
    /// The selected members of `full` (a value of the selection's source type).
    pub fn project(&self, full: &PvStructure) -> PvStructure {
        PvStructure {
            desc: Arc::clone(&self.desc),
            fields: project_values(&full.fields, &self.pick),
        }
    }

    /// The change marks of a full value, numbered as the selection's.
    pub fn project_changes(&self, changed: &BitSet) -> BitSet {
        let mut out = BitSet::new();
        if changed.get(0) {
            out.set(0);
            return out;
        }
        map_bits(&self.full, &self.pick, changed, 0, 0, &mut out);
        out
    }
}

fn project_values(values: &[Value], pick: &Resolved) -> Vec<Value> {
    match pick {
        Resolved::All => values.to_vec(),
        Resolved::Members(members) => members
            .iter()
            .map(|(index, sub)| match (&values[*index], sub) {
                (Value::Structure(inner), Resolved::Members(_)) => {
                    Value::Structure(project_values(inner, sub))
                }
                (value, _) => value.clone(),
            })
            .collect(),
    }
}

/// Marks in `out` (bits from `selected_bit`) what `changed` marks of `desc` (bits from
/// `full_bit`).
fn map_bits(
    desc: &StructDesc,
    pick: &Resolved,
    changed: &BitSet,
    full_bit: usize,
    selected_bit: usize,
    out: &mut BitSet,
) {
    let Resolved::Members(members) = pick else {
        // Selected whole: the same bits, shifted to where the selection numbers it.
        for bit in full_bit..full_bit + 1 + member_bits(desc) {
            if changed.get(bit) {
                out.set(selected_bit + bit - full_bit);
            }
        }
        return;
    };
    let mut next_selected = selected_bit + 1;
    for (index, sub) in members {
        let member_full = full_bit
            + 1
            + desc.fields[..*index]
                .iter()
                .map(|(_, d)| d.bit_count())
                .sum::<usize>();
        let member = &desc.fields[*index].1;
        match (member, sub) {
            (FieldDesc::Structure(inner), Resolved::Members(_)) => {
                if changed.get(member_full) {
                    out.set(next_selected);
                } else {
                    map_bits(inner, sub, changed, member_full, next_selected, out);
                }
                next_selected += 1 + member_bits(&select_desc(inner, sub));
            }
            (FieldDesc::Structure(inner), Resolved::All) => {
                map_bits(inner, sub, changed, member_full, next_selected, out);
                next_selected += member.bit_count();
            }
            _ => {
                if changed.get(member_full) {
                    out.set(next_selected);
                }
                next_selected += member.bit_count();
            }
        }
    }
}

fn member_bits(desc: &StructDesc) -> usize {
    desc.fields.iter().map(|(_, d)| d.bit_count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pvdata::{ByteOrder, Decoder, Encoder, TypeCache};

    fn nt() -> Arc<StructDesc> {
        let alarm = FieldDesc::structure(
            "alarm_t",
            vec![
                ("severity", FieldDesc::Scalar(ScalarType::Int)),
                ("status", FieldDesc::Scalar(ScalarType::Int)),
                ("message", FieldDesc::Scalar(ScalarType::String)),
            ],
        );
        Arc::new(StructDesc::new(
            "epics:nt/NTScalar:1.0",
            vec![
                ("value", FieldDesc::Scalar(ScalarType::Double)),
                ("alarm", alarm),
                ("descriptor", FieldDesc::Scalar(ScalarType::String)),
            ],
        ))
    }

    #[test]
    fn text_forms_parse_and_survive_the_wire() {
        let request =
            Request::parse("record[queueSize=4,pipeline=true]field(value,alarm.severity)").unwrap();
        assert_eq!(request.fields, ["value", "alarm.severity"]);
        assert_eq!((request.queue_size, request.pipeline), (Some(4), true));
        assert_eq!(
            Request::parse("value, alarm").unwrap().fields,
            ["value", "alarm"]
        );
        assert_eq!(Request::parse("field()").unwrap(), Request::default());
        assert!(Request::parse("field(value").is_err());
        let pv = request.to_pv();
        let mut out = Encoder::new(ByteOrder::Little);
        out.field_desc(&pv.field_desc());
        out.value(&pv.field_desc(), &Value::Structure(pv.fields.clone()))
            .unwrap();
        let mut cache = TypeCache::default();
        let mut input = Decoder::new(&out.buf, ByteOrder::Little);
        let desc = input.field_desc(&mut cache).unwrap().unwrap();
        let value = input.value(&desc, &mut cache).unwrap();
        let back = Request::from_pv(&PvStructure::from_parts(&desc, value).unwrap());
        assert_eq!(back, request);
    }

    #[test]
    fn a_selection_serves_the_chosen_members_and_renumbers_their_changes() {
        let full = nt();
        let selection = Request::parse("field(alarm.message,descriptor)")
            .unwrap()
            .select(&full)
            .unwrap();
        assert_eq!(
            selection
                .desc
                .fields
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["alarm", "descriptor"]
        );
        let mut pv = PvStructure::new(Arc::clone(&full));
        let mut changed = BitSet::new();
        pv.set("alarm.message", Value::String("LOW".into()), &mut changed)
            .unwrap();
        let projected = selection.project(&pv);
        assert_eq!(
            projected.value("alarm.message"),
            Some(&Value::String("LOW".into()))
        );
        // Selected: 0 whole, 1 alarm, 2 alarm.message, 3 descriptor.
        assert_eq!(
            selection
                .project_changes(&changed)
                .iter()
                .collect::<Vec<_>>(),
            [2]
        );
        let mut value_only = BitSet::new();
        value_only.set(1);
        assert!(selection.project_changes(&value_only).is_empty());
        assert!(
            Request::parse("field(nothing)")
                .unwrap()
                .select(&full)
                .is_err()
        );
        let all = Request::default().select(&full).unwrap();
        assert_eq!(all.desc, full);
        // Everything, or a structure, selected whole keeps the member marks: a monitor of an
        // image whose counter changed sends the counter, not the image.
        let mut severity = BitSet::new();
        severity.set(3);
        assert_eq!(all.project_changes(&severity), severity);
        let alarm = Request::parse("field(alarm)")
            .unwrap()
            .select(&full)
            .unwrap();
        assert_eq!(
            alarm.project_changes(&severity).iter().collect::<Vec<_>>(),
            [2]
        );
    }
}
