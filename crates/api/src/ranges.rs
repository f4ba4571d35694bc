//! Unsigned fields held to their schema type's range. The document types a `u32` field as
//! `int32` and a `u64` one as `int64` (signed, as OpenAPI defines them, with `minimum: 0`); serde
//! alone would take values up to `u32::MAX` and `u64::MAX`, which the document says are out of
//! range and which a signed column or a client in another language could not hold. These
//! `deserialize_with` functions refuse them, and the body's refusal names the field.

use serde::de::{Deserialize, Deserializer, Error};

fn at_most<'de, D: Deserializer<'de>, T: Into<u64> + Copy>(value: T, max: u64) -> Result<T, D::Error> {
    if value.into() > max {
        return Err(D::Error::custom(format!("{} is out of range: at most {max}", value.into())));
    }
    Ok(value)
}

const INT32_MAX: u64 = i32::MAX as u64;
const INT64_MAX: u64 = i64::MAX as u64;

/// A `u32` within `int32`: 0 to 2,147,483,647.
pub fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    at_most::<D, _>(u32::deserialize(d)?, INT32_MAX)
}

pub fn opt_int32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    Option::<u32>::deserialize(d)?.map(|v| at_most::<D, _>(v, INT32_MAX)).transpose()
}

pub fn vec_int32<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    Vec::<u32>::deserialize(d)?.into_iter().map(|v| at_most::<D, _>(v, INT32_MAX)).collect()
}

/// A `u64` within `int64`: 0 to 9,223,372,036,854,775,807.
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    at_most::<D, _>(u64::deserialize(d)?, INT64_MAX)
}

pub fn opt_int64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<u64>::deserialize(d)?.map(|v| at_most::<D, _>(v, INT64_MAX)).transpose()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Sample {
        #[serde(deserialize_with = "super::int32")]
        a: u32,
        #[serde(default, deserialize_with = "super::opt_int64")]
        b: Option<u64>,
    }

    #[test]
    fn values_past_the_signed_range_are_refused() {
        let ok: Sample = serde_json::from_str(r#"{"a": 2147483647, "b": 9223372036854775807}"#).unwrap();
        assert_eq!((ok.a, ok.b), (i32::MAX as u32, Some(i64::MAX as u64)));
        let missing: Sample = serde_json::from_str(r#"{"a": 0}"#).unwrap();
        assert_eq!(missing.b, None);
        let e = serde_json::from_str::<Sample>(r#"{"a": 2147483648}"#).unwrap_err().to_string();
        assert!(e.contains("at most 2147483647"), "{e}");
        let e = serde_json::from_str::<Sample>(r#"{"a": 1, "b": 9223372036854775808}"#).unwrap_err().to_string();
        assert!(e.contains("at most 9223372036854775807"), "{e}");
    }
}
