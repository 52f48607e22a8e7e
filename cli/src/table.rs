//! Plain-text tables: a header and left-aligned columns as wide as their
//! widest cell.

use serde_json::Value;

/// A column: its heading and where its cell comes from in a row's JSON.
pub struct Column {
    pub heading: &'static str,
    pub cell: fn(&Value) -> String,
}

/// A JSON value as a cell: strings bare, null as "-".
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn render(columns: &[Column], rows: &[Value]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| (c.cell)(row).replace(['\n', '\t'], " "))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.heading.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let mut out = String::new();
        for (i, value) in values.iter().enumerate() {
            if i + 1 == values.len() {
                out.push_str(value);
            } else {
                out.push_str(value);
                out.push_str(&" ".repeat(widths[i] - value.chars().count() + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(columns.iter().map(|c| c.heading).collect());
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_on_their_widest_cell() {
        let columns = [
            Column {
                heading: "id",
                cell: |r| cell(&r["id"]),
            },
            Column {
                heading: "n",
                cell: |r| cell(&r["n"]),
            },
        ];
        let out = render(
            &columns,
            &[
                json!({"id": "long-id", "n": 1}),
                json!({"id": "x", "n": null}),
            ],
        );
        assert_eq!(out, "id       n\nlong-id  1\nx        -\n");
    }
}
