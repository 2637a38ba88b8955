//! CSV as Sluice reads it (reference datasets, `sluice drift compare`):
//! RFC 4180 records, with a byte-order mark and CRLF line ends accepted.

/// Splits CSV text into records of fields: commas; double quotes around a
/// field that holds commas, quotes (`""`) or line ends; blank lines are not
/// records. Errors name the line.
pub fn records(text: &str) -> Result<Vec<Vec<String>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    // Whether the current field began with a quote (then only a comma or
    // the line end may follow the closing quote).
    let mut quoted = false;
    let mut after_quote = false;
    let mut line = 1usize;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    in_quotes = false;
                    after_quote = true;
                }
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            ',' => {
                record.push(std::mem::take(&mut field));
                quoted = false;
                after_quote = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                quoted = false;
                after_quote = false;
                line += 1;
                any = false;
            }
            '"' if field.is_empty() && !quoted => {
                in_quotes = true;
                quoted = true;
            }
            _ => {
                if after_quote {
                    return Err(format!(
                        "line {line}: unexpected {c:?} after a closing quote"
                    ));
                }
                if c == '"' {
                    return Err(format!(
                        "line {line}: a quote inside an unquoted field (quote the whole field)"
                    ));
                }
                field.push(c);
            }
        }
    }
    if in_quotes {
        return Err(format!("line {line}: a quoted field is not closed"));
    }
    if any {
        record.push(field);
        records.push(record);
    }
    // Blank lines (a lone empty field) are not records.
    records.retain(|r| !(r.len() == 1 && r[0].is_empty()));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_quotes_and_line_ends() {
        let r = records("a,b\r\n1,\"x, \"\"y\"\"\"\n\n2,\"multi\nline\"\n").unwrap();
        assert_eq!(
            r,
            vec![
                vec!["a".to_string(), "b".to_string()],
                vec!["1".to_string(), "x, \"y\"".to_string()],
                vec!["2".to_string(), "multi\nline".to_string()],
            ]
        );
        assert_eq!(records("a,b\n1,2").unwrap().len(), 2);
        assert_eq!(records("\u{feff}a\n1\n").unwrap()[0], vec!["a".to_string()]);
        assert!(records("").unwrap().is_empty());
        assert_eq!(records("a,,\n").unwrap()[0].len(), 3);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = records("a\n\"open\n").unwrap_err().to_string();
        assert!(e.contains("not closed"), "{e}");
        let e = records("a\n\"x\"y\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
