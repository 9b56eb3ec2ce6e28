//! The byte layout of a serialised session memory: little-endian integers, length-prefixed byte
//! strings, and tensors as (kind, shape, raw bytes). Raw bytes make a round trip bit-identical; a
//! reader never trusts a length it has not checked against what is left.

use tch::{Device, Kind, Tensor};

/// A serialised session memory that cannot be read back, saying why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionFormatError {
    #[error("the session memory ends early (at byte {offset}); the file is truncated")]
    Truncated { offset: usize },
    #[error("the session memory cannot be restored: {0}")]
    Spill(String),
    #[error("the session memory is corrupt: {0}")]
    Corrupt(String),
    #[error("this is not an infini session memory (bad magic bytes)")]
    NotAMemory,
    #[error("session memory format version {found} is not supported (this build reads versions 1 to {supported})")]
    Version { found: u32, supported: u32 },
    #[error("the session was made with model {found}, but this server runs {expected}; import it into a server with that model")]
    OtherModel { found: String, expected: String },
    #[error(
        "the session was made with another memory layout ({found}); this server uses {expected}"
    )]
    OtherLayout { found: String, expected: String },
}

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    pub fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    pub fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.bytes.extend_from_slice(value);
    }

    pub fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    /// A tensor of any supported kind, copied to the CPU as it is stored (no conversion).
    pub fn tensor(&mut self, tensor: &Tensor) {
        let tensor = tensor.to_device(Device::Cpu).contiguous();
        self.u8(kind_code(tensor.kind()));
        let shape = tensor.size();
        self.u8(shape.len() as u8);
        for dim in &shape {
            self.u64(*dim as u64);
        }
        let numel = tensor.numel();
        let mut data = vec![0u8; numel * tensor.kind().elt_size_in_bytes()];
        tensor.copy_data_u8(&mut data, numel);
        self.bytes(&data);
    }

    /// A tensor that may be absent.
    pub fn optional_tensor(&mut self, tensor: Option<&Tensor>) {
        self.bool(tensor.is_some());
        if let Some(t) = tensor {
            self.tensor(t);
        }
    }
}

/// Reads values back in the order they were written.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.offset == self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SessionFormatError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(SessionFormatError::Truncated {
                offset: self.offset,
            })?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    pub fn u8(&mut self) -> Result<u8, SessionFormatError> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, SessionFormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, SessionFormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn bool(&mut self) -> Result<bool, SessionFormatError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(SessionFormatError::Corrupt(format!(
                "expected a flag (0 or 1) at byte {}, found {other}",
                self.offset - 1
            ))),
        }
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], SessionFormatError> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| SessionFormatError::Truncated {
            offset: self.offset,
        })?;
        self.take(len)
    }

    pub fn str(&mut self) -> Result<&'a str, SessionFormatError> {
        let offset = self.offset;
        std::str::from_utf8(self.bytes()?).map_err(|_| {
            SessionFormatError::Corrupt(format!("the text at byte {offset} is not UTF-8"))
        })
    }

    /// A tensor, placed on `device`.
    pub fn tensor(&mut self, device: Device) -> Result<Tensor, SessionFormatError> {
        let offset = self.offset;
        let kind = kind_from_code(self.u8()?).ok_or_else(|| {
            SessionFormatError::Corrupt(format!("unknown tensor kind at byte {offset}"))
        })?;
        let dims = self.u8()? as usize;
        let shape = (0..dims)
            .map(|_| self.u64().map(|d| d as i64))
            .collect::<Result<Vec<_>, _>>()?;
        let data = self.bytes()?;
        let numel = shape
            .iter()
            .try_fold(1i64, |acc, &d| acc.checked_mul(d).filter(|_| d >= 0));
        let bytes = numel
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_mul(kind.elt_size_in_bytes()));
        if bytes != Some(data.len()) {
            return Err(SessionFormatError::Corrupt(format!(
                "the tensor at byte {offset} has shape {shape:?} but {} bytes",
                data.len()
            )));
        }
        let tensor = Tensor::from_data_size(data, &shape, kind);
        let floating = matches!(
            kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        );
        if floating && tensor.isfinite().all().int64_value(&[]) == 0 {
            return Err(SessionFormatError::Corrupt(format!(
                "the tensor at byte {offset} holds values that are not finite numbers (NaN or ∞)"
            )));
        }
        Ok(tensor.to_device(device))
    }

    pub fn optional_tensor(
        &mut self,
        device: Device,
    ) -> Result<Option<Tensor>, SessionFormatError> {
        Ok(if self.bool()? {
            Some(self.tensor(device)?)
        } else {
            None
        })
    }
}

const KINDS: [Kind; 6] = [
    Kind::Float,
    Kind::BFloat16,
    Kind::Half,
    Kind::Double,
    Kind::Int8,
    Kind::Int64,
];

fn kind_code(kind: Kind) -> u8 {
    KINDS
        .iter()
        .position(|&k| k == kind)
        .unwrap_or_else(|| panic!("session memory holds no {kind:?} tensors")) as u8
}

fn kind_from_code(code: u8) -> Option<Kind> {
    KINDS.get(code as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_tensors_round_trip_bit_for_bit() {
        let t = Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        let mut w = Writer::new();
        w.u64(u64::MAX - 3);
        w.str("fingerprint");
        w.optional_tensor(Some(&t));
        w.optional_tensor(None);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u64().unwrap(), u64::MAX - 3);
        assert_eq!(r.str().unwrap(), "fingerprint");
        let back = r.optional_tensor(Device::Cpu).unwrap().unwrap();
        assert_eq!(back.kind(), Kind::BFloat16);
        assert!(back.equal(&t));
        assert!(r.optional_tensor(Device::Cpu).unwrap().is_none());
        assert!(r.is_done());
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error() {
        let mut w = Writer::new();
        w.tensor(&Tensor::ones([4], (Kind::Float, Device::Cpu)));
        let bytes = w.into_bytes();
        for cut in [0, 1, 5, bytes.len() - 1] {
            assert!(Reader::new(&bytes[..cut]).tensor(Device::Cpu).is_err());
        }
        let mut bad = bytes.clone();
        bad[0] = 200; // unknown kind
        assert!(matches!(
            Reader::new(&bad).tensor(Device::Cpu),
            Err(SessionFormatError::Corrupt(_))
        ));
        // A shape whose size overflows is refused, not multiplied out.
        let mut huge = Writer::new();
        huge.u8(kind_code(Kind::Double));
        huge.u8(2);
        huge.u64(1 << 62);
        huge.u64(1);
        huge.bytes(&[0; 8]);
        assert!(Reader::new(&huge.into_bytes()).tensor(Device::Cpu).is_err());
    }

    #[test]
    fn a_tensor_holding_nan_or_infinity_is_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let values = Tensor::ones([3], (Kind::Float, Device::Cpu));
            let _ = values.get(1).fill_(bad);
            let mut w = Writer::new();
            w.tensor(&values.to_kind(Kind::BFloat16));
            let error = Reader::new(&w.into_bytes())
                .tensor(Device::Cpu)
                .unwrap_err();
            assert!(error.to_string().contains("not finite"), "{bad}: {error}");
        }
    }
}
