//! A Bot API call's parameters, from whichever encoding the client used: a JSON body (as
//! teloxide sends), a form, or the query string; integers as numbers or as text.

use serde_json::{Map, Value};

use super::Request;

/// Integers arrive as JSON numbers from teloxide but as strings from forms and queries.
pub(super) fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// The call's parameters as a JSON object, from whichever encoding the client used. Files
/// (multipart bodies) are not taken: nothing here sends any.
pub(super) fn parse_params(req: &Request) -> Result<Value, String> {
    let mut params = Map::new();
    if let Some(query) = req.query() {
        params.extend(parse_form(query));
    }
    let content_type = req
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if req.body.iter().all(u8::is_ascii_whitespace) {
        // No body: parameters, if any, came in the query.
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        params.extend(parse_form(&String::from_utf8_lossy(&req.body)));
    } else {
        let body: Value =
            serde_json::from_slice(&req.body).map_err(|e| format!("invalid JSON body: {e}"))?;
        match body {
            Value::Object(map) => params.extend(map),
            _ => return Err("JSON body is not an object".into()),
        }
    }
    Ok(Value::Object(params))
}

fn parse_form(s: &str) -> Map<String, Value> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode = |x: &str| percent_decode(&x.replace('+', " "));
            (decode(k), Value::String(decode(v)))
        })
        .collect()
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(percent_decode("a%3Ab%zz"), "a:b%zz");
    }
}
