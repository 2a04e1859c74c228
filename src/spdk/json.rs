//! SPDK JSON in and out.
//!
//! In: `nvmf_create_transport` hands the transport its parameters as SPDK's
//! parsed form, an array of `spdk_json_val` tokens (`transport_specific`, the
//! whole RPC params object). [`object_from_vals`] reads one object of tokens
//! into a `serde_json` map so the options are decoded by
//! [`crate::transport::TransportOptions::apply_json`], the same code the
//! standalone target uses.
//!
//! Out: [`write_named`] writes one `serde_json` scalar through SPDK's JSON
//! writer (`dump_opts`).

use std::ffi::CString;

use serde_json::{Map, Number, Value};

use super::sys;

/// Nesting accepted in parameters (SPDK's own RPC values nest far less).
const MAX_DEPTH: usize = 32;

/// Parameters SPDK handed over that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JsonValError {
    /// The first token is not `OBJECT_BEGIN`.
    #[error("transport parameters are not a JSON object (first token type {0:#x})")]
    NotAnObject(u32),
    /// Token counts that run past the object's end.
    #[error("malformed parameter tokens at index {0}")]
    Malformed(usize),
    /// A name or string that is not UTF-8.
    #[error("parameter text at index {0} is not UTF-8")]
    NotUtf8(usize),
    /// A number token that is not a JSON number.
    #[error("parameter {text:?} at index {index} is not a number")]
    BadNumber {
        /// Token index.
        index: usize,
        /// The number's text.
        text: String,
    },
    /// Deeper than [`MAX_DEPTH`].
    #[error("parameters nest deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// The tokens of the object that starts at `first`.
///
/// # Safety
/// `first` must point to a valid `spdk_json_val` array as SPDK's parser makes
/// it (an `OBJECT_BEGIN` whose `len` counts the values up to its `OBJECT_END`),
/// and the text the tokens point into must stay valid for `'a`.
pub(crate) unsafe fn object_tokens<'a>(
    first: *const sys::spdk_json_val,
) -> Result<&'a [sys::spdk_json_val], JsonValError> {
    // SAFETY: the caller guarantees `first` points to a valid token.
    let head = unsafe { &*first };
    if head.type_ != sys::SPDK_JSON_VAL_OBJECT_BEGIN {
        return Err(JsonValError::NotAnObject(head.type_));
    }
    let count = head.len as usize + 2;
    // SAFETY: SPDK's parser stores `len` values after the BEGIN token and then
    // the END token, so `count` tokens are in bounds (caller's contract).
    Ok(unsafe { std::slice::from_raw_parts(first, count) })
}

/// The text of a NAME, STRING or NUMBER token.
fn token_text(vals: &[sys::spdk_json_val], i: usize) -> Result<&str, JsonValError> {
    let v = &vals[i];
    if v.len == 0 {
        return Ok("");
    }
    if v.start.is_null() {
        return Err(JsonValError::Malformed(i));
    }
    // SAFETY: for NAME, STRING and NUMBER tokens SPDK's parser sets `start`
    // and `len` to the bytes of the value inside the parsed buffer, which the
    // caller of `object_tokens` keeps alive.
    let bytes = unsafe { std::slice::from_raw_parts(v.start.cast::<u8>(), v.len as usize) };
    std::str::from_utf8(bytes).map_err(|_| JsonValError::NotUtf8(i))
}

/// Reads the object `vals` (as returned by [`object_tokens`]).
pub(crate) fn object_from_vals(
    vals: &[sys::spdk_json_val],
) -> Result<Map<String, Value>, JsonValError> {
    let (v, next) = value_at(vals, 0, 0)?;
    if next != vals.len() {
        return Err(JsonValError::Malformed(next));
    }
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(JsonValError::NotAnObject(vals[0].type_)),
    }
}

/// The value starting at token `i` and the index after it.
fn value_at(
    vals: &[sys::spdk_json_val],
    i: usize,
    depth: usize,
) -> Result<(Value, usize), JsonValError> {
    if depth > MAX_DEPTH {
        return Err(JsonValError::TooDeep);
    }
    let v = vals.get(i).ok_or(JsonValError::Malformed(i))?;
    Ok(match v.type_ {
        sys::SPDK_JSON_VAL_NULL => (Value::Null, i + 1),
        sys::SPDK_JSON_VAL_TRUE => (Value::Bool(true), i + 1),
        sys::SPDK_JSON_VAL_FALSE => (Value::Bool(false), i + 1),
        sys::SPDK_JSON_VAL_STRING => (Value::String(token_text(vals, i)?.to_string()), i + 1),
        sys::SPDK_JSON_VAL_NUMBER => {
            let text = token_text(vals, i)?;
            let n: Number = serde_json::from_str(text).map_err(|_| JsonValError::BadNumber {
                index: i,
                text: text.to_string(),
            })?;
            (Value::Number(n), i + 1)
        }
        sys::SPDK_JSON_VAL_ARRAY_BEGIN => {
            let end = i + v.len as usize + 1;
            let mut items = Vec::new();
            let mut j = i + 1;
            while j < end {
                let (item, next) = value_at(vals, j, depth + 1)?;
                items.push(item);
                j = next;
            }
            check_end(vals, end, sys::SPDK_JSON_VAL_ARRAY_END)?;
            (Value::Array(items), end + 1)
        }
        sys::SPDK_JSON_VAL_OBJECT_BEGIN => {
            let end = i + v.len as usize + 1;
            let mut map = Map::new();
            let mut j = i + 1;
            while j < end {
                let name = vals.get(j).ok_or(JsonValError::Malformed(j))?;
                if name.type_ != sys::SPDK_JSON_VAL_NAME {
                    return Err(JsonValError::Malformed(j));
                }
                let key = token_text(vals, j)?.to_string();
                let (item, next) = value_at(vals, j + 1, depth + 1)?;
                map.insert(key, item);
                j = next;
            }
            check_end(vals, end, sys::SPDK_JSON_VAL_OBJECT_END)?;
            (Value::Object(map), end + 1)
        }
        _ => return Err(JsonValError::Malformed(i)),
    })
}

fn check_end(
    vals: &[sys::spdk_json_val],
    end: usize,
    ty: sys::spdk_json_val_type,
) -> Result<(), JsonValError> {
    match vals.get(end) {
        Some(v) if v.type_ == ty => Ok(()),
        _ => Err(JsonValError::Malformed(end)),
    }
}

/// Writes `"key": value` for a bool or integer `value` with SPDK's writer.
/// Other kinds are not written (the options have none).
///
/// # Safety
/// `w` must be the live writer SPDK passed to the op.
pub(crate) unsafe fn write_named(
    api: &sys::SpdkApi,
    w: *mut sys::spdk_json_write_ctx,
    key: &str,
    value: &Value,
) {
    let Ok(name) = CString::new(key) else {
        return;
    };
    let name = name.as_ptr();
    match value {
        Value::Bool(b) => {
            // SAFETY: `w` is live (caller), `name` is NUL-terminated and alive.
            unsafe { api.spdk_json_write_named_bool(w, name, *b) };
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                // SAFETY: as above.
                unsafe { api.spdk_json_write_named_uint64(w, name, u) };
            } else if let Some(i) = n.as_i64() {
                // SAFETY: as above.
                unsafe { api.spdk_json_write_named_int64(w, name, i) };
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens over `text` the way SPDK's parser lays them out.
    fn tok(ty: sys::spdk_json_val_type, text: &'static str, len: u32) -> sys::spdk_json_val {
        sys::spdk_json_val {
            start: text.as_ptr() as *mut _,
            len,
            type_: ty,
        }
    }

    fn s(ty: sys::spdk_json_val_type, text: &'static str) -> sys::spdk_json_val {
        tok(ty, text, text.len() as u32)
    }

    #[test]
    fn reads_an_rpc_params_object() {
        use sys::*;
        // {"trtype":"RDMA_RS","num_cqe":-7,"no_srq":true,"x":[1,{"y":null}]}
        let vals = [
            tok(SPDK_JSON_VAL_OBJECT_BEGIN, "{", 14),
            s(SPDK_JSON_VAL_NAME, "trtype"),
            s(SPDK_JSON_VAL_STRING, "RDMA_RS"),
            s(SPDK_JSON_VAL_NAME, "num_cqe"),
            s(SPDK_JSON_VAL_NUMBER, "-7"),
            s(SPDK_JSON_VAL_NAME, "no_srq"),
            tok(SPDK_JSON_VAL_TRUE, "true", 0),
            s(SPDK_JSON_VAL_NAME, "x"),
            tok(SPDK_JSON_VAL_ARRAY_BEGIN, "[", 5),
            s(SPDK_JSON_VAL_NUMBER, "1"),
            tok(SPDK_JSON_VAL_OBJECT_BEGIN, "{", 2),
            s(SPDK_JSON_VAL_NAME, "y"),
            tok(SPDK_JSON_VAL_NULL, "null", 0),
            tok(SPDK_JSON_VAL_OBJECT_END, "}", 0),
            tok(SPDK_JSON_VAL_ARRAY_END, "]", 0),
            tok(SPDK_JSON_VAL_OBJECT_END, "}", 0),
        ];
        // SAFETY: a well-formed token array over static text.
        let toks = unsafe { object_tokens(vals.as_ptr()) }.unwrap();
        assert_eq!(toks.len(), vals.len());
        let m = object_from_vals(toks).unwrap();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"trtype":"RDMA_RS","num_cqe":-7,"no_srq":true,"x":[1,{"y":null}]})
        );
    }

    #[test]
    fn refuses_malformed_tokens() {
        use sys::*;
        let bad_end = [
            tok(SPDK_JSON_VAL_OBJECT_BEGIN, "{", 2),
            s(SPDK_JSON_VAL_NAME, "a"),
            s(SPDK_JSON_VAL_NUMBER, "1"),
            tok(SPDK_JSON_VAL_ARRAY_END, "]", 0),
        ];
        assert_eq!(object_from_vals(&bad_end), Err(JsonValError::Malformed(3)));
        let not_name = [
            tok(SPDK_JSON_VAL_OBJECT_BEGIN, "{", 2),
            s(SPDK_JSON_VAL_STRING, "a"),
            s(SPDK_JSON_VAL_NUMBER, "1"),
            tok(SPDK_JSON_VAL_OBJECT_END, "}", 0),
        ];
        assert_eq!(object_from_vals(&not_name), Err(JsonValError::Malformed(1)));
        let bad_number = [
            tok(SPDK_JSON_VAL_OBJECT_BEGIN, "{", 2),
            s(SPDK_JSON_VAL_NAME, "a"),
            s(SPDK_JSON_VAL_NUMBER, "1x"),
            tok(SPDK_JSON_VAL_OBJECT_END, "}", 0),
        ];
        assert!(matches!(
            object_from_vals(&bad_number),
            Err(JsonValError::BadNumber { index: 2, .. })
        ));
        let array = [
            tok(SPDK_JSON_VAL_ARRAY_BEGIN, "[", 0),
            tok(SPDK_JSON_VAL_ARRAY_END, "]", 0),
        ];
        // SAFETY: a well-formed token array over static text.
        let r = unsafe { object_tokens(array.as_ptr()) };
        assert_eq!(
            r.err(),
            Some(JsonValError::NotAnObject(SPDK_JSON_VAL_ARRAY_BEGIN))
        );
    }
}
