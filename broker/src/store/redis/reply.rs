//! Reading Redis replies: arrays, strings, integers, hash pairs and lists of encoded values, and
//! the error for a reply that does not fit.

use super::DecodeError;
use crate::store::StoreError;
use redis::Value;

pub(super) fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("redis: unexpected reply: {what}"))
}

/// The elements of an array reply.
pub(super) fn array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("redis: {e:?}"))),
        other => Err(malformed(&format!("expected an array, got {other:?}"))),
    }
}

/// The bytes of a string reply.
pub(super) fn bytes(value: Value) -> Result<Vec<u8>, StoreError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("redis: {e:?}"))),
        other => Err(malformed(&format!("expected a string, got {other:?}"))),
    }
}

/// The value of an integer reply.
pub(super) fn int(value: Value) -> Result<i64, StoreError> {
    match value {
        Value::Int(i) => Ok(i),
        Value::BulkString(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("expected an integer")),
        Value::ServerError(e) => Err(StoreError::Unavailable(format!("redis: {e:?}"))),
        other => Err(malformed(&format!("expected an integer, got {other:?}"))),
    }
}

/// A hash field's name and value.
pub(super) type Field = (Vec<u8>, Vec<u8>);

/// Field/value pairs of a flat HGETALL reply.
pub(super) fn pairs(flat: Vec<Value>) -> Result<Vec<Field>, StoreError> {
    if !flat.len().is_multiple_of(2) {
        return Err(malformed("odd number of hash elements"));
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        out.push((bytes(name)?, bytes(value)?));
    }
    Ok(out)
}

/// Decodes every element of a list reply, leaving out (and logging) those that do not decode.
/// `each` is told every element's position, with the decoded value or `None` if it was left out.
pub(super) fn decode_list<T>(
    client_id: &str,
    what: &'static str,
    list: Vec<Value>,
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    mut each: impl FnMut(usize, Option<&mut T>),
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::with_capacity(list.len());
    for (index, item) in list.into_iter().enumerate() {
        match decode(&bytes(item)?) {
            Ok(mut value) => {
                each(index, Some(&mut value));
                out.push(value);
            }
            Err(e) => {
                tracing::warn!(client_id, what, error = %e, "stored value dropped");
                each(index, None);
            }
        }
    }
    Ok(out)
}

/// The text of a string reply.
pub(super) fn text(value: Value) -> Result<String, StoreError> {
    String::from_utf8(bytes(value)?).map_err(|_| malformed("expected UTF-8 text"))
}
