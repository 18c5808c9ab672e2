//! pvData: type descriptors ([`FieldDesc`]), values ([`Value`]) and their encoding, with the
//! per-connection introspection cache ([`TypeCache`]) and the change marks ([`BitSet`]) of
//! partial updates.
//!
//! A value is kept apart from its type, as on the wire: a [`Value::Structure`] holds its fields'
//! values in the order of its [`StructDesc`]. [`PvStructure`] pairs the two for reading fields
//! by name.
//!
//! Decoding never allocates more than the bytes received could fill: every announced count is
//! checked against the bytes left before anything is reserved, and types nest at most
//! [`MAX_DEPTH`] deep.

use std::collections::HashMap;
use std::sync::Arc;

use crate::PvaError;

/// How deep type descriptors may nest: deeper ones are refused (a stack overflow is not an
/// answer to a hostile peer). NTNDArray nests five deep.
pub const MAX_DEPTH: usize = 32;

/// Byte order of a connection's payloads, set by the server's first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ByteOrder {
    /// What every peer seen so far sends (x86 and ARM hosts).
    #[default]
    Little,
    /// Flag bit 7 of the header.
    Big,
}

/// The scalar kinds of pvData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarType {
    /// `boolean`.
    Boolean,
    /// `byte`.
    Byte,
    /// `short`.
    Short,
    /// `int`.
    Int,
    /// `long`.
    Long,
    /// `ubyte`.
    UByte,
    /// `ushort`.
    UShort,
    /// `uint`.
    UInt,
    /// `ulong`.
    ULong,
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `string`.
    String,
}

impl ScalarType {
    /// The type code's low bits (without the array bits).
    fn code(self) -> u8 {
        match self {
            Self::Boolean => 0x00,
            Self::Byte => 0x20,
            Self::Short => 0x21,
            Self::Int => 0x22,
            Self::Long => 0x23,
            Self::UByte => 0x24,
            Self::UShort => 0x25,
            Self::UInt => 0x26,
            Self::ULong => 0x27,
            Self::Float => 0x42,
            Self::Double => 0x43,
            Self::String => 0x60,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x00 => Self::Boolean,
            0x20 => Self::Byte,
            0x21 => Self::Short,
            0x22 => Self::Int,
            0x23 => Self::Long,
            0x24 => Self::UByte,
            0x25 => Self::UShort,
            0x26 => Self::UInt,
            0x27 => Self::ULong,
            0x42 => Self::Float,
            0x43 => Self::Double,
            0x60 => Self::String,
            _ => return None,
        })
    }

    /// Bytes per element on the wire; strings take at least one (their size).
    pub fn width(self) -> usize {
        match self {
            Self::Boolean | Self::Byte | Self::UByte | Self::String => 1,
            Self::Short | Self::UShort => 2,
            Self::Int | Self::UInt | Self::Float => 4,
            Self::Long | Self::ULong | Self::Double => 8,
        }
    }

    /// The name pvData's type notation gives it (`pvinfo` prints these).
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Byte => "byte",
            Self::Short => "short",
            Self::Int => "int",
            Self::Long => "long",
            Self::UByte => "ubyte",
            Self::UShort => "ushort",
            Self::UInt => "uint",
            Self::ULong => "ulong",
            Self::Float => "float",
            Self::Double => "double",
            Self::String => "string",
        }
    }
}

/// A structure's or union's id and members.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StructDesc {
    /// The type id, e.g. `epics:nt/NTScalar:1.0`; may be empty.
    pub id: String,
    /// Members in order.
    pub fields: Vec<(String, FieldDesc)>,
}

impl StructDesc {
    /// A structure of these members.
    pub fn new(id: &str, fields: Vec<(&str, FieldDesc)>) -> Self {
        Self {
            id: id.to_owned(),
            fields: fields
                .into_iter()
                .map(|(name, desc)| (name.to_owned(), desc))
                .collect(),
        }
    }

    /// The index and type of member `name`.
    pub fn field(&self, name: &str) -> Option<(usize, &FieldDesc)> {
        self.fields
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n == name)
            .map(|(i, (_, desc))| (i, desc))
    }
}

/// A pvData type.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldDesc {
    /// One value.
    Scalar(ScalarType),
    /// A variable-size array.
    ScalarArray(ScalarType),
    /// A structure.
    Structure(Arc<StructDesc>),
    /// An array of structures (each may be null).
    StructureArray(Arc<StructDesc>),
    /// A union of the members (one or none selected).
    Union(Arc<StructDesc>),
    /// An array of unions.
    UnionArray(Arc<StructDesc>),
    /// The variant union `any`: a value of any type, sent with its type.
    Any,
    /// An array of `any`.
    AnyArray,
}

impl FieldDesc {
    /// A structure of these members.
    pub fn structure(id: &str, fields: Vec<(&str, FieldDesc)>) -> Self {
        Self::Structure(Arc::new(StructDesc::new(id, fields)))
    }

    /// The structure's members, if it is one.
    pub fn as_structure(&self) -> Option<&StructDesc> {
        match self {
            Self::Structure(s) => Some(s),
            _ => None,
        }
    }

    /// The type of the member at `path` (`.`-separated) of a structure.
    pub fn at(&self, path: &str) -> Option<&FieldDesc> {
        path.split('.')
            .filter(|part| !part.is_empty())
            .try_fold(self, |desc, name| {
                desc.as_structure()?.field(name).map(|(_, d)| d)
            })
    }

    /// How many bits this field takes in a [`BitSet`]: one, plus its members' for a structure.
    pub fn bit_count(&self) -> usize {
        match self {
            Self::Structure(s) => 1 + s.fields.iter().map(|(_, d)| d.bit_count()).sum::<usize>(),
            _ => 1,
        }
    }

    /// The default value of this type: zeros, empty strings and arrays, no union selection.
    pub fn default_value(&self) -> Value {
        match self {
            Self::Scalar(t) => Value::default_scalar(*t),
            Self::ScalarArray(t) => Value::Array(ArrayValue::empty(*t)),
            Self::Structure(s) => {
                Value::Structure(s.fields.iter().map(|(_, d)| d.default_value()).collect())
            }
            Self::StructureArray(_) => Value::StructureArray(Vec::new()),
            Self::Union(_) => Value::Union(None),
            Self::UnionArray(_) => Value::UnionArray(Vec::new()),
            Self::Any => Value::Any(None),
            Self::AnyArray => Value::AnyArray(Vec::new()),
        }
    }

    /// The type in pvData's notation, one member per line (as `pvinfo` prints it).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        self.describe_into("", 0, &mut out);
        out
    }

    fn describe_into(&self, name: &str, indent: usize, out: &mut String) {
        let pad = "    ".repeat(indent);
        let (head, members) = match self {
            Self::Scalar(t) => (t.name().to_owned(), None),
            Self::ScalarArray(t) => (format!("{}[]", t.name()), None),
            Self::Structure(s) => (or_default(&s.id, "structure"), Some(s)),
            Self::StructureArray(s) => (format!("{}[]", or_default(&s.id, "structure")), Some(s)),
            Self::Union(s) => (or_default(&s.id, "union"), Some(s)),
            Self::UnionArray(s) => (format!("{}[]", or_default(&s.id, "union")), Some(s)),
            Self::Any => ("any".to_owned(), None),
            Self::AnyArray => ("any[]".to_owned(), None),
        };
        out.push_str(&pad);
        out.push_str(&head);
        if !name.is_empty() {
            out.push(' ');
            out.push_str(name);
        }
        out.push('\n');
        for (member, desc) in members.iter().flat_map(|s| s.fields.iter()) {
            desc.describe_into(member, indent + 1, out);
        }
    }
}

fn or_default(id: &str, default: &str) -> String {
    if id.is_empty() {
        default.to_owned()
    } else {
        id.to_owned()
    }
}

/// A variable-size array's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayValue {
    /// `boolean[]`.
    Boolean(Vec<bool>),
    /// `byte[]`.
    Byte(Vec<i8>),
    /// `short[]`.
    Short(Vec<i16>),
    /// `int[]`.
    Int(Vec<i32>),
    /// `long[]`.
    Long(Vec<i64>),
    /// `ubyte[]`.
    UByte(Vec<u8>),
    /// `ushort[]`.
    UShort(Vec<u16>),
    /// `uint[]`.
    UInt(Vec<u32>),
    /// `ulong[]`.
    ULong(Vec<u64>),
    /// `float[]`.
    Float(Vec<f32>),
    /// `double[]`.
    Double(Vec<f64>),
    /// `string[]`.
    String(Vec<String>),
}

impl ArrayValue {
    /// An empty array of `t`.
    pub fn empty(t: ScalarType) -> Self {
        match t {
            ScalarType::Boolean => Self::Boolean(Vec::new()),
            ScalarType::Byte => Self::Byte(Vec::new()),
            ScalarType::Short => Self::Short(Vec::new()),
            ScalarType::Int => Self::Int(Vec::new()),
            ScalarType::Long => Self::Long(Vec::new()),
            ScalarType::UByte => Self::UByte(Vec::new()),
            ScalarType::UShort => Self::UShort(Vec::new()),
            ScalarType::UInt => Self::UInt(Vec::new()),
            ScalarType::ULong => Self::ULong(Vec::new()),
            ScalarType::Float => Self::Float(Vec::new()),
            ScalarType::Double => Self::Double(Vec::new()),
            ScalarType::String => Self::String(Vec::new()),
        }
    }

    /// The element type.
    pub fn scalar_type(&self) -> ScalarType {
        match self {
            Self::Boolean(_) => ScalarType::Boolean,
            Self::Byte(_) => ScalarType::Byte,
            Self::Short(_) => ScalarType::Short,
            Self::Int(_) => ScalarType::Int,
            Self::Long(_) => ScalarType::Long,
            Self::UByte(_) => ScalarType::UByte,
            Self::UShort(_) => ScalarType::UShort,
            Self::UInt(_) => ScalarType::UInt,
            Self::ULong(_) => ScalarType::ULong,
            Self::Float(_) => ScalarType::Float,
            Self::Double(_) => ScalarType::Double,
            Self::String(_) => ScalarType::String,
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Self::Boolean(v) => v.len(),
            Self::Byte(v) => v.len(),
            Self::Short(v) => v.len(),
            Self::Int(v) => v.len(),
            Self::Long(v) => v.len(),
            Self::UByte(v) => v.len(),
            Self::UShort(v) => v.len(),
            Self::UInt(v) => v.len(),
            Self::ULong(v) => v.len(),
            Self::Float(v) => v.len(),
            Self::Double(v) => v.len(),
            Self::String(v) => v.len(),
        }
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numbers as `f64` (booleans as 0 and 1); none for strings.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        Some(match self {
            Self::Boolean(v) => v.iter().map(|&b| f64::from(u8::from(b))).collect(),
            Self::Byte(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Short(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Int(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Long(v) => v.iter().map(|&x| x as f64).collect(),
            Self::UByte(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::UShort(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::UInt(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::ULong(v) => v.iter().map(|&x| x as f64).collect(),
            Self::Float(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Self::Double(v) => v.clone(),
            Self::String(_) => return None,
        })
    }
}

/// A pvData value, shaped by its [`FieldDesc`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `boolean`.
    Boolean(bool),
    /// `byte`.
    Byte(i8),
    /// `short`.
    Short(i16),
    /// `int`.
    Int(i32),
    /// `long`.
    Long(i64),
    /// `ubyte`.
    UByte(u8),
    /// `ushort`.
    UShort(u16),
    /// `uint`.
    UInt(u32),
    /// `ulong`.
    ULong(u64),
    /// `float`.
    Float(f32),
    /// `double`.
    Double(f64),
    /// `string`.
    String(String),
    /// A scalar array.
    Array(ArrayValue),
    /// A structure's members' values, in its descriptor's order.
    Structure(Vec<Value>),
    /// Structures, each possibly null.
    StructureArray(Vec<Option<Vec<Value>>>),
    /// A union: the selected member's index and value, or nothing selected.
    Union(Option<(usize, Box<Value>)>),
    /// Unions, each possibly null.
    UnionArray(Vec<Option<(usize, Value)>>),
    /// `any`: a value with its own type, or nothing.
    Any(Option<Box<(FieldDesc, Value)>>),
    /// `any[]`.
    AnyArray(Vec<Option<(FieldDesc, Value)>>),
}

impl Value {
    fn default_scalar(t: ScalarType) -> Self {
        match t {
            ScalarType::Boolean => Self::Boolean(false),
            ScalarType::Byte => Self::Byte(0),
            ScalarType::Short => Self::Short(0),
            ScalarType::Int => Self::Int(0),
            ScalarType::Long => Self::Long(0),
            ScalarType::UByte => Self::UByte(0),
            ScalarType::UShort => Self::UShort(0),
            ScalarType::UInt => Self::UInt(0),
            ScalarType::ULong => Self::ULong(0),
            ScalarType::Float => Self::Float(0.0),
            ScalarType::Double => Self::Double(0.0),
            ScalarType::String => Self::String(String::new()),
        }
    }

    /// A number as `f64` (a boolean as 0 or 1); none otherwise.
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Self::Boolean(b) => f64::from(u8::from(b)),
            Self::Byte(x) => f64::from(x),
            Self::Short(x) => f64::from(x),
            Self::Int(x) => f64::from(x),
            Self::Long(x) => x as f64,
            Self::UByte(x) => f64::from(x),
            Self::UShort(x) => f64::from(x),
            Self::UInt(x) => f64::from(x),
            Self::ULong(x) => x as f64,
            Self::Float(x) => f64::from(x),
            Self::Double(x) => x,
            _ => return None,
        })
    }

    /// An integer as `i64` (none for fractions, strings, and integers beyond `i64`).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Self::Boolean(b) => i64::from(b),
            Self::Byte(x) => i64::from(x),
            Self::Short(x) => i64::from(x),
            Self::Int(x) => i64::from(x),
            Self::Long(x) => x,
            Self::UByte(x) => i64::from(x),
            Self::UShort(x) => i64::from(x),
            Self::UInt(x) => i64::from(x),
            Self::ULong(x) => i64::try_from(x).ok()?,
            _ => return None,
        })
    }

    /// The text of a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// Converts a number or string to scalar type `t`, as a put converts what a client sends to
    /// the field's type; none when it cannot (text that is not a number, say).
    pub fn convert_to(&self, t: ScalarType) -> Option<Value> {
        if t == ScalarType::String {
            return Some(Self::String(match self {
                Self::String(s) => s.clone(),
                Self::Boolean(b) => b.to_string(),
                other => {
                    let x = other.as_f64()?;
                    other
                        .as_i64()
                        .map_or_else(|| x.to_string(), |i| i.to_string())
                }
            }));
        }
        let x = match self {
            Self::String(s) => match s.trim() {
                "true" => 1.0,
                "false" => 0.0,
                text => text.parse::<f64>().ok()?,
            },
            other => other.as_f64()?,
        };
        Some(match t {
            ScalarType::Boolean => Self::Boolean(x != 0.0),
            ScalarType::Byte => Self::Byte(x as i8),
            ScalarType::Short => Self::Short(x as i16),
            ScalarType::Int => Self::Int(x as i32),
            ScalarType::Long => Self::Long(self.as_i64().unwrap_or(x as i64)),
            ScalarType::UByte => Self::UByte(x as u8),
            ScalarType::UShort => Self::UShort(x as u16),
            ScalarType::UInt => Self::UInt(x as u32),
            ScalarType::ULong => Self::ULong(x as u64),
            ScalarType::Float => Self::Float(x as f32),
            ScalarType::Double => Self::Double(x),
            ScalarType::String => unreachable!("handled above"),
        })
    }
}

/// A structure's type and value together, for reading members by `.`-separated path.
#[derive(Debug, Clone, PartialEq)]
pub struct PvStructure {
    /// The type.
    pub desc: Arc<StructDesc>,
    /// The members' values, in the type's order.
    pub fields: Vec<Value>,
}

impl PvStructure {
    /// The default value of `desc`.
    pub fn new(desc: Arc<StructDesc>) -> Self {
        let fields = desc.fields.iter().map(|(_, d)| d.default_value()).collect();
        Self { desc, fields }
    }

    /// From a type and value; an error if they do not match at the top.
    pub fn from_parts(desc: &FieldDesc, value: Value) -> Result<Self, PvaError> {
        match (desc, value) {
            (FieldDesc::Structure(s), Value::Structure(fields))
                if fields.len() == s.fields.len() =>
            {
                Ok(Self {
                    desc: Arc::clone(s),
                    fields,
                })
            }
            _ => Err(PvaError::Malformed("a structure was expected")),
        }
    }

    /// The type as a field.
    pub fn field_desc(&self) -> FieldDesc {
        FieldDesc::Structure(Arc::clone(&self.desc))
    }

    /// The type id.
    pub fn id(&self) -> &str {
        &self.desc.id
    }

    /// The value and type at `path` (`a.b.c`).
    pub fn get(&self, path: &str) -> Option<(&FieldDesc, &Value)> {
        let mut names = path.split('.').filter(|p| !p.is_empty());
        let first = names.next()?;
        let (index, mut desc) = self.desc.field(first)?;
        let mut value = self.fields.get(index)?;
        for name in names {
            let (index, member) = desc.as_structure()?.field(name)?;
            let Value::Structure(values) = value else {
                return None;
            };
            value = values.get(index)?;
            desc = member;
        }
        Some((desc, value))
    }

    /// The value at `path`.
    pub fn value(&self, path: &str) -> Option<&Value> {
        self.get(path).map(|(_, v)| v)
    }

    /// The mutable value at `path`, with its bit number in this structure's [`BitSet`]s.
    pub fn get_mut(&mut self, path: &str) -> Option<(usize, &FieldDesc, &mut Value)> {
        let mut names = path.split('.').filter(|p| !p.is_empty());
        let first = names.next()?;
        let (index, mut desc) = self.desc.field(first)?;
        let mut bit = 1 + self.desc.fields[..index]
            .iter()
            .map(|(_, d)| d.bit_count())
            .sum::<usize>();
        let mut value = self.fields.get_mut(index)?;
        for name in names {
            let members = desc.as_structure()?;
            let (index, member) = members.field(name)?;
            bit += 1 + members.fields[..index]
                .iter()
                .map(|(_, d)| d.bit_count())
                .sum::<usize>();
            let Value::Structure(values) = value else {
                return None;
            };
            value = values.get_mut(index)?;
            desc = member;
        }
        Some((bit, desc, value))
    }

    /// Sets the value at `path` and marks it in `changed`; an error if there is no such member.
    pub fn set(&mut self, path: &str, value: Value, changed: &mut BitSet) -> Result<(), PvaError> {
        let (bit, _, slot) = self
            .get_mut(path)
            .ok_or_else(|| PvaError::NoSuchField(path.to_owned()))?;
        *slot = value;
        changed.set(bit);
        Ok(())
    }

    /// The bit number of the member at `path`.
    pub fn bit_of(&self, path: &str) -> Option<usize> {
        let mut names = path.split('.').filter(|p| !p.is_empty()).peekable();
        names.peek()?;
        let mut desc: &StructDesc = &self.desc;
        let mut bit = 0;
        for name in names {
            let (index, member) = desc.field(name)?;
            bit += 1 + desc.fields[..index]
                .iter()
                .map(|(_, d)| d.bit_count())
                .sum::<usize>();
            match member {
                FieldDesc::Structure(s) => desc = s,
                _ => return Some(bit),
            }
        }
        Some(bit)
    }
}

/// Which fields of a structure changed (or, in a monitor update, overran): bit 0 is the whole
/// structure, then every member depth first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    /// No bit set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only bit 0: the whole structure.
    pub fn all() -> Self {
        let mut bits = Self::new();
        bits.set(0);
        bits
    }

    /// Sets bit `i`.
    pub fn set(&mut self, i: usize) {
        let word = i / 64;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (i % 64);
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Whether no bit is set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Sets every bit `other` has.
    pub fn union_with(&mut self, other: &BitSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// The set bits, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }

    /// Clears every bit.
    pub fn clear(&mut self) {
        self.words.clear();
    }

    fn bytes(&self) -> usize {
        let bits = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |w| w * 64 + 64 - self.words[w].leading_zeros() as usize);
        bits.div_ceil(8)
    }

    /// Writes it: its size in bytes, whole 64-bit words in the byte order, then the last
    /// word's bytes low to high (pvData's `BitSet::serialize`).
    pub fn encode(&self, out: &mut Encoder) {
        let n = self.bytes();
        out.size(n);
        let whole = n / 8;
        for &word in &self.words[..whole] {
            out.u64(word);
        }
        if !n.is_multiple_of(8) {
            let last = self.words[whole];
            for byte in 0..n % 8 {
                out.buf.push((last >> (8 * byte)) as u8);
            }
        }
    }

    /// Reads one written by [`BitSet::encode`].
    pub fn decode(input: &mut Decoder<'_>) -> Result<Self, PvaError> {
        let n = input.size()?.ok_or(PvaError::Malformed("null bit set"))?;
        input.need(n)?;
        let mut words = Vec::with_capacity(n.div_ceil(8));
        for _ in 0..n / 8 {
            words.push(input.u64()?);
        }
        if !n.is_multiple_of(8) {
            let mut last = 0u64;
            for byte in 0..n % 8 {
                last |= u64::from(input.u8()?) << (8 * byte);
            }
            words.push(last);
        }
        Ok(Self { words })
    }
}

/// Writes pvData in a connection's byte order.
#[derive(Debug, Default)]
pub struct Encoder {
    /// What was written.
    pub buf: Vec<u8>,
    /// The byte order of numbers.
    pub order: ByteOrder,
}

macro_rules! put_number {
    ($name:ident, $t:ty) => {
        /// Writes one number in the byte order.
        pub fn $name(&mut self, x: $t) {
            match self.order {
                ByteOrder::Little => self.buf.extend_from_slice(&x.to_le_bytes()),
                ByteOrder::Big => self.buf.extend_from_slice(&x.to_be_bytes()),
            }
        }
    };
}

impl Encoder {
    /// An empty buffer writing in `order`.
    pub fn new(order: ByteOrder) -> Self {
        Self {
            buf: Vec::new(),
            order,
        }
    }

    /// One byte.
    pub fn u8(&mut self, x: u8) {
        self.buf.push(x);
    }

    put_number!(u16, u16);
    put_number!(u32, u32);
    put_number!(u64, u64);
    put_number!(i16, i16);
    put_number!(i32, i32);
    put_number!(i64, i64);
    put_number!(f32, f32);
    put_number!(f64, f64);

    /// A size: one byte below 254, else `0xFE` and an `i32` (and an `i64` beyond that).
    pub fn size(&mut self, n: usize) {
        if n < 254 {
            self.buf.push(n as u8);
        } else if let Ok(n) = i32::try_from(n)
            && n != i32::MAX
        {
            self.buf.push(0xFE);
            self.i32(n);
        } else {
            self.buf.push(0xFE);
            self.i32(i32::MAX);
            self.i64(n as i64);
        }
    }

    /// A null size (`0xFF`): no union member, a null string.
    pub fn null_size(&mut self) {
        self.buf.push(0xFF);
    }

    /// A string: its size in bytes, then UTF-8.
    pub fn string(&mut self, s: &str) {
        self.size(s.len());
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A type descriptor, in full (no introspection cache: a sender may always send the type).
    pub fn field_desc(&mut self, desc: &FieldDesc) {
        match desc {
            FieldDesc::Scalar(t) => self.u8(t.code()),
            FieldDesc::ScalarArray(t) => self.u8(t.code() | 0x08),
            FieldDesc::Structure(s) => {
                self.u8(0x80);
                self.members(s);
            }
            FieldDesc::StructureArray(s) => {
                self.u8(0x88);
                self.u8(0x80);
                self.members(s);
            }
            FieldDesc::Union(s) => {
                self.u8(0x81);
                self.members(s);
            }
            FieldDesc::UnionArray(s) => {
                self.u8(0x89);
                self.u8(0x81);
                self.members(s);
            }
            FieldDesc::Any => self.u8(0x82),
            FieldDesc::AnyArray => self.u8(0x8A),
        }
    }

    fn members(&mut self, s: &StructDesc) {
        self.string(&s.id);
        self.size(s.fields.len());
        for (name, desc) in &s.fields {
            self.string(name);
            self.field_desc(desc);
        }
    }

    /// A value of type `desc`; an error if it does not have that shape.
    pub fn value(&mut self, desc: &FieldDesc, value: &Value) -> Result<(), PvaError> {
        match (desc, value) {
            (FieldDesc::Scalar(t), v) => self.scalar(*t, v),
            (FieldDesc::ScalarArray(t), Value::Array(a)) if a.scalar_type() == *t => {
                self.array(a);
                Ok(())
            }
            (FieldDesc::Structure(s), Value::Structure(values)) => self.structure(s, values),
            (FieldDesc::StructureArray(s), Value::StructureArray(items)) => {
                self.size(items.len());
                for item in items {
                    match item {
                        None => self.u8(0),
                        Some(values) => {
                            self.u8(1);
                            self.structure(s, values)?;
                        }
                    }
                }
                Ok(())
            }
            (FieldDesc::Union(s), Value::Union(selected)) => {
                self.union(s, selected.as_ref().map(|(i, v)| (*i, &**v)))
            }
            (FieldDesc::UnionArray(s), Value::UnionArray(items)) => {
                self.size(items.len());
                for item in items {
                    match item {
                        None => self.u8(0),
                        Some((i, v)) => {
                            self.u8(1);
                            self.union(s, Some((*i, v)))?;
                        }
                    }
                }
                Ok(())
            }
            (FieldDesc::Any, Value::Any(any)) => self.any(any.as_deref().map(|(d, v)| (d, v))),
            (FieldDesc::AnyArray, Value::AnyArray(items)) => {
                self.size(items.len());
                for item in items {
                    match item {
                        None => self.u8(0),
                        Some((d, v)) => {
                            self.u8(1);
                            self.any(Some((d, v)))?;
                        }
                    }
                }
                Ok(())
            }
            _ => Err(PvaError::Mismatch(desc.describe())),
        }
    }

    fn structure(&mut self, s: &StructDesc, values: &[Value]) -> Result<(), PvaError> {
        if values.len() != s.fields.len() {
            return Err(PvaError::Mismatch(s.id.clone()));
        }
        for ((_, desc), value) in s.fields.iter().zip(values) {
            self.value(desc, value)?;
        }
        Ok(())
    }

    fn union(&mut self, s: &StructDesc, selected: Option<(usize, &Value)>) -> Result<(), PvaError> {
        match selected {
            None => {
                self.null_size();
                Ok(())
            }
            Some((i, value)) => {
                let (_, desc) = s
                    .fields
                    .get(i)
                    .ok_or_else(|| PvaError::Mismatch(s.id.clone()))?;
                self.size(i);
                self.value(desc, value)
            }
        }
    }

    fn any(&mut self, any: Option<(&FieldDesc, &Value)>) -> Result<(), PvaError> {
        match any {
            None => {
                self.u8(0xFF);
                Ok(())
            }
            Some((desc, value)) => {
                self.field_desc(desc);
                self.value(desc, value)
            }
        }
    }

    fn scalar(&mut self, t: ScalarType, value: &Value) -> Result<(), PvaError> {
        match (t, value) {
            (ScalarType::Boolean, Value::Boolean(b)) => self.u8(u8::from(*b)),
            (ScalarType::Byte, Value::Byte(x)) => self.u8(*x as u8),
            (ScalarType::Short, Value::Short(x)) => self.i16(*x),
            (ScalarType::Int, Value::Int(x)) => self.i32(*x),
            (ScalarType::Long, Value::Long(x)) => self.i64(*x),
            (ScalarType::UByte, Value::UByte(x)) => self.u8(*x),
            (ScalarType::UShort, Value::UShort(x)) => self.u16(*x),
            (ScalarType::UInt, Value::UInt(x)) => self.u32(*x),
            (ScalarType::ULong, Value::ULong(x)) => self.u64(*x),
            (ScalarType::Float, Value::Float(x)) => self.f32(*x),
            (ScalarType::Double, Value::Double(x)) => self.f64(*x),
            (ScalarType::String, Value::String(s)) => self.string(s),
            _ => return Err(PvaError::Mismatch(t.name().to_owned())),
        }
        Ok(())
    }

    fn array(&mut self, a: &ArrayValue) {
        self.size(a.len());
        self.buf.reserve(a.len() * a.scalar_type().width());
        match a {
            ArrayValue::Boolean(v) => self.buf.extend(v.iter().map(|&b| u8::from(b))),
            ArrayValue::Byte(v) => self.buf.extend(v.iter().map(|&x| x as u8)),
            ArrayValue::UByte(v) => self.buf.extend_from_slice(v),
            ArrayValue::Short(v) => v.iter().for_each(|&x| self.i16(x)),
            ArrayValue::Int(v) => v.iter().for_each(|&x| self.i32(x)),
            ArrayValue::Long(v) => v.iter().for_each(|&x| self.i64(x)),
            ArrayValue::UShort(v) => v.iter().for_each(|&x| self.u16(x)),
            ArrayValue::UInt(v) => v.iter().for_each(|&x| self.u32(x)),
            ArrayValue::ULong(v) => v.iter().for_each(|&x| self.u64(x)),
            ArrayValue::Float(v) => v.iter().for_each(|&x| self.f32(x)),
            ArrayValue::Double(v) => v.iter().for_each(|&x| self.f64(x)),
            ArrayValue::String(v) => v.iter().for_each(|s| self.string(s)),
        }
    }

    /// The members of `pv` that `changed` marks (a marked structure whole), in bit order: the
    /// data of a GET reply or a monitor update.
    pub fn partial(&mut self, pv: &PvStructure, changed: &BitSet) -> Result<(), PvaError> {
        if changed.get(0) {
            return self.structure(&pv.desc, &pv.fields);
        }
        let mut bit = 1;
        self.partial_members(&pv.desc, &pv.fields, changed, &mut bit)
    }

    fn partial_members(
        &mut self,
        s: &StructDesc,
        values: &[Value],
        changed: &BitSet,
        bit: &mut usize,
    ) -> Result<(), PvaError> {
        for ((_, desc), value) in s.fields.iter().zip(values) {
            if changed.get(*bit) {
                self.value(desc, value)?;
                *bit += desc.bit_count();
                continue;
            }
            *bit += 1;
            if let (FieldDesc::Structure(inner), Value::Structure(members)) = (desc, value) {
                self.partial_members(inner, members, changed, bit)?;
            }
        }
        Ok(())
    }
}

/// Reads pvData in a connection's byte order.
#[derive(Debug)]
pub struct Decoder<'a> {
    input: &'a [u8],
    /// The byte order of numbers.
    pub order: ByteOrder,
}

macro_rules! get_number {
    ($name:ident, $t:ty, $n:expr) => {
        /// Reads one number in the byte order.
        pub fn $name(&mut self) -> Result<$t, PvaError> {
            let bytes: [u8; $n] = self.take($n)?.try_into().map_err(|_| PvaError::Truncated)?;
            Ok(match self.order {
                ByteOrder::Little => <$t>::from_le_bytes(bytes),
                ByteOrder::Big => <$t>::from_be_bytes(bytes),
            })
        }
    };
}

impl<'a> Decoder<'a> {
    /// Reads `input` in `order`.
    pub fn new(input: &'a [u8], order: ByteOrder) -> Self {
        Self { input, order }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.input
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.input.is_empty()
    }

    fn need(&self, n: usize) -> Result<(), PvaError> {
        if self.input.len() < n {
            Err(PvaError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], PvaError> {
        self.need(n)?;
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, PvaError> {
        Ok(self.take(1)?[0])
    }

    get_number!(u16, u16, 2);
    get_number!(u32, u32, 4);
    get_number!(u64, u64, 8);
    get_number!(i16, i16, 2);
    get_number!(i32, i32, 4);
    get_number!(i64, i64, 8);
    get_number!(f32, f32, 4);
    get_number!(f64, f64, 8);

    /// A size, or none for the null size `0xFF`.
    pub fn size(&mut self) -> Result<Option<usize>, PvaError> {
        match self.u8()? {
            0xFF => Ok(None),
            0xFE => {
                let n = self.i32()?;
                let n = if n == i32::MAX {
                    self.i64()?
                } else {
                    i64::from(n)
                };
                usize::try_from(n)
                    .map(Some)
                    .map_err(|_| PvaError::Malformed("negative size"))
            }
            n => Ok(Some(usize::from(n))),
        }
    }

    /// A count of items of at least `width` bytes each, checked against the bytes left.
    fn count(&mut self, width: usize) -> Result<usize, PvaError> {
        let n = self.size()?.ok_or(PvaError::Malformed("null count"))?;
        self.need(n.saturating_mul(width.max(1)))?;
        Ok(n)
    }

    /// A string (a null one reads as empty).
    pub fn string(&mut self) -> Result<String, PvaError> {
        let Some(n) = self.size()? else {
            return Ok(String::new());
        };
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| PvaError::Malformed("string not UTF-8"))
    }

    /// A type descriptor, using and filling the connection's introspection `cache`; none for
    /// the null type.
    pub fn field_desc(&mut self, cache: &mut TypeCache) -> Result<Option<FieldDesc>, PvaError> {
        self.field_desc_at(cache, 0)
    }

    fn field_desc_at(
        &mut self,
        cache: &mut TypeCache,
        depth: usize,
    ) -> Result<Option<FieldDesc>, PvaError> {
        if depth > MAX_DEPTH {
            return Err(PvaError::Malformed("types nest too deep"));
        }
        let code = self.u8()?;
        Ok(Some(match code {
            0xFF => return Ok(None),
            0xFE => {
                let id = self.u16()?;
                cache
                    .types
                    .get(&id)
                    .cloned()
                    .ok_or(PvaError::UnknownTypeId(id))?
            }
            0xFD => {
                let id = self.u16()?;
                let desc = self
                    .field_desc_at(cache, depth + 1)?
                    .ok_or(PvaError::Malformed("null type under an id"))?;
                cache.insert(id, desc.clone())?;
                desc
            }
            0xFC => return Err(PvaError::Malformed("tagged type ids are not supported")),
            0x80 => FieldDesc::Structure(Arc::new(self.members(cache, depth)?)),
            0x81 => FieldDesc::Union(Arc::new(self.members(cache, depth)?)),
            0x82 => FieldDesc::Any,
            0x83 => {
                // A bounded string: a string with a maximum, read as a string.
                self.size()?;
                FieldDesc::Scalar(ScalarType::String)
            }
            0x88 | 0x89 => {
                let element = self
                    .field_desc_at(cache, depth + 1)?
                    .ok_or(PvaError::Malformed("null element type"))?;
                match (code, element) {
                    (0x88, FieldDesc::Structure(s)) => FieldDesc::StructureArray(s),
                    (0x89, FieldDesc::Union(s)) => FieldDesc::UnionArray(s),
                    _ => return Err(PvaError::Malformed("array element of the wrong kind")),
                }
            }
            0x8A => FieldDesc::AnyArray,
            code => {
                let scalar = ScalarType::from_code(code & !0x18)
                    .ok_or(PvaError::Malformed("unknown type code"))?;
                match code & 0x18 {
                    0x00 => FieldDesc::Scalar(scalar),
                    0x08 => FieldDesc::ScalarArray(scalar),
                    // Bounded arrays carry their bound; read as variable ones.
                    0x10 => {
                        self.size()?;
                        FieldDesc::ScalarArray(scalar)
                    }
                    _ => return Err(PvaError::Malformed("fixed-size arrays are not supported")),
                }
            }
        }))
    }

    fn members(&mut self, cache: &mut TypeCache, depth: usize) -> Result<StructDesc, PvaError> {
        let id = self.string()?;
        // Each member takes at least two bytes (an empty name and a type code).
        let n = self.count(2)?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            let name = self.string()?;
            let desc = self
                .field_desc_at(cache, depth + 1)?
                .ok_or(PvaError::Malformed("null member type"))?;
            fields.push((name, desc));
        }
        Ok(StructDesc { id, fields })
    }

    /// A value of type `desc`.
    pub fn value(&mut self, desc: &FieldDesc, cache: &mut TypeCache) -> Result<Value, PvaError> {
        self.value_at(desc, cache, 0)
    }

    fn value_at(
        &mut self,
        desc: &FieldDesc,
        cache: &mut TypeCache,
        depth: usize,
    ) -> Result<Value, PvaError> {
        if depth > MAX_DEPTH {
            return Err(PvaError::Malformed("values nest too deep"));
        }
        Ok(match desc {
            FieldDesc::Scalar(t) => self.scalar(*t)?,
            FieldDesc::ScalarArray(t) => Value::Array(self.array(*t)?),
            FieldDesc::Structure(s) => Value::Structure(self.structure(s, cache, depth)?),
            FieldDesc::StructureArray(s) => {
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(match self.u8()? {
                        0 => None,
                        _ => Some(self.structure(s, cache, depth)?),
                    });
                }
                Value::StructureArray(items)
            }
            FieldDesc::Union(s) => {
                Value::Union(self.union(s, cache, depth)?.map(|(i, v)| (i, Box::new(v))))
            }
            FieldDesc::UnionArray(s) => {
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(match self.u8()? {
                        0 => None,
                        _ => self.union(s, cache, depth)?,
                    });
                }
                Value::UnionArray(items)
            }
            FieldDesc::Any => Value::Any(self.any(cache, depth)?.map(Box::new)),
            FieldDesc::AnyArray => {
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(match self.u8()? {
                        0 => None,
                        _ => self.any(cache, depth)?,
                    });
                }
                Value::AnyArray(items)
            }
        })
    }

    fn structure(
        &mut self,
        s: &StructDesc,
        cache: &mut TypeCache,
        depth: usize,
    ) -> Result<Vec<Value>, PvaError> {
        s.fields
            .iter()
            .map(|(_, desc)| self.value_at(desc, cache, depth + 1))
            .collect()
    }

    fn union(
        &mut self,
        s: &StructDesc,
        cache: &mut TypeCache,
        depth: usize,
    ) -> Result<Option<(usize, Value)>, PvaError> {
        let Some(selector) = self.size()? else {
            return Ok(None);
        };
        let (_, desc) = s
            .fields
            .get(selector)
            .ok_or(PvaError::Malformed("union selector out of range"))?;
        Ok(Some((selector, self.value_at(desc, cache, depth + 1)?)))
    }

    fn any(
        &mut self,
        cache: &mut TypeCache,
        depth: usize,
    ) -> Result<Option<(FieldDesc, Value)>, PvaError> {
        let Some(desc) = self.field_desc_at(cache, depth + 1)? else {
            return Ok(None);
        };
        let value = self.value_at(&desc, cache, depth + 1)?;
        Ok(Some((desc, value)))
    }

    fn scalar(&mut self, t: ScalarType) -> Result<Value, PvaError> {
        Ok(match t {
            ScalarType::Boolean => Value::Boolean(self.u8()? != 0),
            ScalarType::Byte => Value::Byte(self.u8()? as i8),
            ScalarType::Short => Value::Short(self.i16()?),
            ScalarType::Int => Value::Int(self.i32()?),
            ScalarType::Long => Value::Long(self.i64()?),
            ScalarType::UByte => Value::UByte(self.u8()?),
            ScalarType::UShort => Value::UShort(self.u16()?),
            ScalarType::UInt => Value::UInt(self.u32()?),
            ScalarType::ULong => Value::ULong(self.u64()?),
            ScalarType::Float => Value::Float(self.f32()?),
            ScalarType::Double => Value::Double(self.f64()?),
            ScalarType::String => Value::String(self.string()?),
        })
    }

    fn array(&mut self, t: ScalarType) -> Result<ArrayValue, PvaError> {
        let n = self.count(t.width())?;
        // Whole arrays at once: an image is millions of elements.
        let order = self.order;
        macro_rules! numbers {
            ($variant:ident, $t:ty) => {{
                const WIDTH: usize = std::mem::size_of::<$t>();
                let bytes = self.take(n * WIDTH)?;
                ArrayValue::$variant(
                    bytes
                        .chunks_exact(WIDTH)
                        .map(|chunk| {
                            let mut element = [0u8; WIDTH];
                            element.copy_from_slice(chunk);
                            match order {
                                ByteOrder::Little => <$t>::from_le_bytes(element),
                                ByteOrder::Big => <$t>::from_be_bytes(element),
                            }
                        })
                        .collect(),
                )
            }};
        }
        Ok(match t {
            ScalarType::Boolean => {
                ArrayValue::Boolean(self.take(n)?.iter().map(|&b| b != 0).collect())
            }
            ScalarType::Byte => ArrayValue::Byte(self.take(n)?.iter().map(|&b| b as i8).collect()),
            ScalarType::UByte => ArrayValue::UByte(self.take(n)?.to_vec()),
            ScalarType::Short => numbers!(Short, i16),
            ScalarType::Int => numbers!(Int, i32),
            ScalarType::Long => numbers!(Long, i64),
            ScalarType::UShort => numbers!(UShort, u16),
            ScalarType::UInt => numbers!(UInt, u32),
            ScalarType::ULong => numbers!(ULong, u64),
            ScalarType::Float => numbers!(Float, f32),
            ScalarType::Double => numbers!(Double, f64),
            ScalarType::String => {
                let mut strings = Vec::with_capacity(n);
                for _ in 0..n {
                    strings.push(self.string()?);
                }
                ArrayValue::String(strings)
            }
        })
    }

    /// The members `changed` marks, read into `pv` (a GET reply's or monitor update's data).
    pub fn partial(
        &mut self,
        pv: &mut PvStructure,
        changed: &BitSet,
        cache: &mut TypeCache,
    ) -> Result<(), PvaError> {
        if changed.get(0) {
            let desc = Arc::clone(&pv.desc);
            pv.fields = self.structure(&desc, cache, 0)?;
            return Ok(());
        }
        let desc = Arc::clone(&pv.desc);
        let mut bit = 1;
        self.partial_members(&desc, &mut pv.fields, changed, cache, &mut bit)
    }

    fn partial_members(
        &mut self,
        s: &StructDesc,
        values: &mut [Value],
        changed: &BitSet,
        cache: &mut TypeCache,
        bit: &mut usize,
    ) -> Result<(), PvaError> {
        for ((_, desc), value) in s.fields.iter().zip(values.iter_mut()) {
            if changed.get(*bit) {
                *value = self.value_at(desc, cache, 1)?;
                *bit += desc.bit_count();
                continue;
            }
            *bit += 1;
            if let (FieldDesc::Structure(inner), Value::Structure(members)) = (desc, value) {
                self.partial_members(inner, members, changed, cache, bit)?;
            }
        }
        Ok(())
    }
}

/// Types a peer defined by id on one connection (`0xFD`), for its later references (`0xFE`).
/// Bounded: a peer that defines more ids than [`TypeCache::LIMIT`] is refused.
#[derive(Debug, Default)]
pub struct TypeCache {
    types: HashMap<u16, FieldDesc>,
}

impl TypeCache {
    /// Ids one connection may define.
    pub const LIMIT: usize = 4096;

    fn insert(&mut self, id: u16, desc: FieldDesc) -> Result<(), PvaError> {
        if self.types.len() >= Self::LIMIT && !self.types.contains_key(&id) {
            return Err(PvaError::Malformed("too many cached types"));
        }
        self.types.insert(id, desc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm() -> FieldDesc {
        FieldDesc::structure(
            "alarm_t",
            vec![
                ("severity", FieldDesc::Scalar(ScalarType::Int)),
                ("status", FieldDesc::Scalar(ScalarType::Int)),
                ("message", FieldDesc::Scalar(ScalarType::String)),
            ],
        )
    }

    fn scalar() -> FieldDesc {
        FieldDesc::structure(
            "epics:nt/NTScalar:1.0",
            vec![
                ("value", FieldDesc::Scalar(ScalarType::Double)),
                ("alarm", alarm()),
                (
                    "u",
                    FieldDesc::Union(Arc::new(StructDesc::new(
                        "",
                        vec![
                            ("a", FieldDesc::ScalarArray(ScalarType::UShort)),
                            ("b", FieldDesc::ScalarArray(ScalarType::String)),
                        ],
                    ))),
                ),
                ("x", FieldDesc::Any),
            ],
        )
    }

    fn round_trip(order: ByteOrder) {
        let desc = scalar();
        let mut pv = PvStructure::from_parts(&desc, desc.default_value()).unwrap();
        let mut changed = BitSet::new();
        pv.set("value", Value::Double(1.5), &mut changed).unwrap();
        pv.set("alarm.message", Value::String("HIGH".into()), &mut changed)
            .unwrap();
        pv.set(
            "u",
            Value::Union(Some((
                0,
                Box::new(Value::Array(ArrayValue::UShort(vec![1, 2, 65535]))),
            ))),
            &mut changed,
        )
        .unwrap();
        pv.set(
            "x",
            Value::Any(Some(Box::new((
                FieldDesc::Scalar(ScalarType::String),
                Value::String("none".into()),
            )))),
            &mut changed,
        )
        .unwrap();
        let mut out = Encoder::new(order);
        out.field_desc(&desc);
        out.value(&desc, &Value::Structure(pv.fields.clone()))
            .unwrap();
        let mut cache = TypeCache::default();
        let mut input = Decoder::new(&out.buf, order);
        let decoded = input.field_desc(&mut cache).unwrap().unwrap();
        assert_eq!(decoded, desc);
        let value = input.value(&decoded, &mut cache).unwrap();
        assert!(input.is_empty());
        assert_eq!(PvStructure::from_parts(&decoded, value).unwrap(), pv);
    }

    #[test]
    fn types_and_values_round_trip_in_either_byte_order() {
        round_trip(ByteOrder::Little);
        round_trip(ByteOrder::Big);
    }

    #[test]
    fn bits_number_members_depth_first() {
        let desc = scalar();
        let pv = PvStructure::from_parts(&desc, desc.default_value()).unwrap();
        assert_eq!(pv.bit_of("value"), Some(1));
        assert_eq!(pv.bit_of("alarm"), Some(2));
        assert_eq!(pv.bit_of("alarm.status"), Some(4));
        assert_eq!(pv.bit_of("alarm.message"), Some(5));
        assert_eq!(pv.bit_of("u"), Some(6));
        assert_eq!(pv.bit_of("x"), Some(7));
        assert_eq!(desc.bit_count(), 8);
    }

    #[test]
    fn a_partial_update_carries_only_the_marked_members() {
        let desc = scalar();
        let mut sent = PvStructure::from_parts(&desc, desc.default_value()).unwrap();
        let mut changed = BitSet::new();
        sent.set("value", Value::Double(7.0), &mut changed).unwrap();
        sent.set("alarm.severity", Value::Int(2), &mut changed)
            .unwrap();
        let mut out = Encoder::new(ByteOrder::Little);
        changed.encode(&mut out);
        out.partial(&sent, &changed).unwrap();
        // bitset (1 size byte + 1 byte), a double, an int.
        assert_eq!(out.buf.len(), 2 + 8 + 4);
        let mut received = PvStructure::from_parts(&desc, desc.default_value()).unwrap();
        received
            .set(
                "alarm.message",
                Value::String("kept".into()),
                &mut BitSet::new(),
            )
            .unwrap();
        let mut input = Decoder::new(&out.buf, ByteOrder::Little);
        let bits = BitSet::decode(&mut input).unwrap();
        assert_eq!(bits, changed);
        input
            .partial(&mut received, &bits, &mut TypeCache::default())
            .unwrap();
        assert!(input.is_empty());
        assert_eq!(received.value("value"), Some(&Value::Double(7.0)));
        assert_eq!(received.value("alarm.severity"), Some(&Value::Int(2)));
        assert_eq!(
            received.value("alarm.message"),
            Some(&Value::String("kept".into()))
        );
    }

    #[test]
    fn sizes_and_bit_sets_use_the_long_forms_past_their_short_ones() {
        for n in [0, 253, 254, 70_000] {
            let mut out = Encoder::new(ByteOrder::Big);
            out.size(n);
            assert_eq!(
                Decoder::new(&out.buf, ByteOrder::Big).size().unwrap(),
                Some(n)
            );
        }
        let mut bits = BitSet::new();
        for i in [0, 9, 64, 70] {
            bits.set(i);
        }
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let mut out = Encoder::new(order);
            bits.encode(&mut out);
            // 71 bits: 9 bytes, one whole word and one byte.
            assert_eq!(out.buf.len(), 1 + 9);
            let decoded = BitSet::decode(&mut Decoder::new(&out.buf, order)).unwrap();
            assert_eq!(decoded.iter().collect::<Vec<_>>(), [0, 9, 64, 70]);
        }
    }

    #[test]
    fn cached_types_are_defined_then_referenced() {
        let desc = alarm();
        let mut out = Encoder::new(ByteOrder::Little);
        out.u8(0xFD);
        out.u16(7);
        out.field_desc(&desc);
        out.u8(0xFE);
        out.u16(7);
        let mut cache = TypeCache::default();
        let mut input = Decoder::new(&out.buf, ByteOrder::Little);
        assert_eq!(input.field_desc(&mut cache).unwrap(), Some(desc.clone()));
        assert_eq!(input.field_desc(&mut cache).unwrap(), Some(desc));
        let unknown = [0xFE, 8, 0];
        assert!(matches!(
            Decoder::new(&unknown, ByteOrder::Little).field_desc(&mut cache),
            Err(PvaError::UnknownTypeId(8))
        ));
    }

    #[test]
    fn hostile_counts_and_nesting_are_refused_without_allocating() {
        // An array announcing 2^31 doubles in 6 bytes.
        let mut out = Encoder::new(ByteOrder::Little);
        out.size(i32::MAX as usize - 1);
        assert_eq!(
            Decoder::new(&out.buf, ByteOrder::Little).array(ScalarType::Double),
            Err(PvaError::Truncated)
        );
        // Structures nested past the limit.
        let mut deep = Vec::new();
        for _ in 0..=MAX_DEPTH + 1 {
            deep.extend_from_slice(&[0x80, 0, 1, 0]);
        }
        assert!(matches!(
            Decoder::new(&deep, ByteOrder::Little).field_desc(&mut TypeCache::default()),
            Err(PvaError::Malformed(_))
        ));
    }
}
