//! Derived signals a beamline configures over an event's readings, as BMM's plots compute
//! them: `It/I0`, `ln(I0/It)`, `(If1+If2+If3+If4)/I0`, `ln(abs(It/Ir))`.
//!
//! Arithmetic (`+ - * /`, unary minus, parentheses), numbers, reading names (letters, digits,
//! `_`, `.` and `:`, not starting with a digit) and the functions `ln`, `log10`, `exp`, `sqrt`,
//! `abs`. Parsed once when the pipeline loads, so a typo is an error at its key then.

use std::collections::BTreeMap;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// A constant.
    Number(f64),
    /// A reading of the event.
    Reading(String),
    /// `-a`.
    Negate(Box<Signal>),
    /// `a op b`.
    Binary(Box<Signal>, Op, Box<Signal>),
    /// `f(a)`.
    Call(Function, Box<Signal>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `+`
    Add,
    /// `-`
    Subtract,
    /// `*`
    Multiply,
    /// `/`
    Divide,
}

/// A function of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Natural logarithm.
    Ln,
    /// Base-10 logarithm.
    Log10,
    /// e^x.
    Exp,
    /// Square root.
    Sqrt,
    /// Absolute value.
    Abs,
}

impl Function {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "ln" => Function::Ln,
            "log10" => Function::Log10,
            "exp" => Function::Exp,
            "sqrt" => Function::Sqrt,
            "abs" => Function::Abs,
            _ => return None,
        })
    }
}

/// Why an expression does not parse: what was found where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {at}: {message}")]
pub struct SignalError {
    /// 0-based character offset.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

impl Signal {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, SignalError> {
        let mut parser = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let signal = parser.sum()?;
        parser.skip_space();
        if parser.at < parser.chars.len() {
            return Err(parser.error(format!("unexpected {:?}", parser.chars[parser.at])));
        }
        Ok(signal)
    }

    /// The readings it uses.
    pub fn readings(&self) -> Vec<&str> {
        match self {
            Signal::Number(_) => Vec::new(),
            Signal::Reading(name) => vec![name],
            Signal::Negate(a) | Signal::Call(_, a) => a.readings(),
            Signal::Binary(a, _, b) => [a.readings(), b.readings()].concat(),
        }
    }

    /// Its value from the event's scalar readings; `None` when one it uses is missing.
    pub fn evaluate(&self, readings: &BTreeMap<&str, f64>) -> Option<f64> {
        Some(match self {
            Signal::Number(value) => *value,
            Signal::Reading(name) => *readings.get(name.as_str())?,
            Signal::Negate(a) => -a.evaluate(readings)?,
            Signal::Binary(a, op, b) => {
                let (a, b) = (a.evaluate(readings)?, b.evaluate(readings)?);
                match op {
                    Op::Add => a + b,
                    Op::Subtract => a - b,
                    Op::Multiply => a * b,
                    Op::Divide => a / b,
                }
            }
            Signal::Call(function, a) => {
                let a = a.evaluate(readings)?;
                match function {
                    Function::Ln => a.ln(),
                    Function::Log10 => a.log10(),
                    Function::Exp => a.exp(),
                    Function::Sqrt => a.sqrt(),
                    Function::Abs => a.abs(),
                }
            }
        })
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn error(&self, message: impl Into<String>) -> SignalError {
        SignalError {
            at: self.at,
            message: message.into(),
        }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.get(self.at).copied()
    }

    fn sum(&mut self) -> Result<Signal, SignalError> {
        let mut left = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.at += 1;
            let op = if op == '+' { Op::Add } else { Op::Subtract };
            left = Signal::Binary(Box::new(left), op, Box::new(self.product()?));
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Signal, SignalError> {
        let mut left = self.unary()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.at += 1;
            let op = if op == '*' { Op::Multiply } else { Op::Divide };
            left = Signal::Binary(Box::new(left), op, Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Signal, SignalError> {
        if self.peek() == Some('-') {
            self.at += 1;
            return Ok(Signal::Negate(Box::new(self.unary()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Signal, SignalError> {
        match self.peek() {
            Some('(') => {
                self.at += 1;
                let inner = self.sum()?;
                self.close()?;
                Ok(inner)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_alphabetic() || c == '_' => {
                let start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|&c| c.is_alphanumeric() || matches!(c, '_' | '.' | ':'))
                {
                    self.at += 1;
                }
                let name: String = self.chars[start..self.at].iter().collect();
                if self.peek() != Some('(') {
                    return Ok(Signal::Reading(name));
                }
                let Some(function) = Function::named(&name) else {
                    self.at = start;
                    return Err(self.error(format!(
                        "unknown function {name:?} (ln, log10, exp, sqrt, abs)"
                    )));
                };
                self.at += 1;
                let argument = self.sum()?;
                self.close()?;
                Ok(Signal::Call(function, Box::new(argument)))
            }
            Some(c) => Err(self.error(format!("unexpected {c:?}"))),
            None => Err(self.error("the expression ends too early")),
        }
    }

    fn close(&mut self) -> Result<(), SignalError> {
        if self.peek() != Some(')') {
            return Err(self.error("expected ')'"));
        }
        self.at += 1;
        Ok(())
    }

    fn number(&mut self) -> Result<Signal, SignalError> {
        let start = self.at;
        while let Some(&c) = self.chars.get(self.at) {
            let exponent_sign = matches!(c, '+' | '-')
                && matches!(self.chars.get(self.at.wrapping_sub(1)), Some('e' | 'E'));
            if c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E') || exponent_sign {
                self.at += 1;
            } else {
                break;
            }
        }
        let text: String = self.chars[start..self.at].iter().collect();
        text.parse().map(Signal::Number).map_err(|_| SignalError {
            at: start,
            message: format!("{text:?} is not a number"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluate(text: &str, readings: &[(&str, f64)]) -> Option<f64> {
        Signal::parse(text)
            .unwrap()
            .evaluate(&readings.iter().copied().collect())
    }

    #[test]
    fn bmm_signals_evaluate_as_numpy_would() {
        let readings = [("I0", 2.0), ("It", 0.5), ("Ir", 0.25), ("If1", 1.0), ("If2", 3.0)];
        assert_eq!(evaluate("It/I0", &readings), Some(0.25));
        assert_eq!(evaluate("ln(I0/It)", &readings), Some(4.0f64.ln()));
        assert_eq!(evaluate("(If1+If2)/I0", &readings), Some(2.0));
        assert_eq!(evaluate("ln(abs(It/Ir))", &readings), Some(2.0f64.ln()));
        assert_eq!(evaluate("-It*2 - -1", &readings), Some(0.0));
        assert_eq!(evaluate("1.5e-1 + 1e+1 * sqrt(4)", &readings), Some(0.15 + 20.0));
        assert_eq!(evaluate("It/Ix", &readings), None);
        assert_eq!(
            Signal::parse("(If1 + If2) / I0").unwrap().readings(),
            ["If1", "If2", "I0"]
        );
        assert_eq!(evaluate("xs:roi01.value * 2", &[("xs:roi01.value", 3.0)]), Some(6.0));
    }

    #[test]
    fn mistakes_say_where() {
        let error = |text: &str| Signal::parse(text).unwrap_err();
        assert_eq!(error("It/").at, 3);
        assert_eq!(error("It/I0)").message, "unexpected ')'");
        assert!(error("log(It)").message.contains("unknown function \"log\""));
        assert_eq!(error("(It").message, "expected ')'");
        assert_eq!(error("1.2.3").message, "\"1.2.3\" is not a number");
        assert_eq!(error("It % 2").at, 3);
    }
}
