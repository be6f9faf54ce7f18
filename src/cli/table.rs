//! Plain aligned text tables for human output.

/// Left-aligned columns separated by two spaces; the first row is the header. Cells are shown
/// escaped ([`fleetup::terminal::cell`]): a value a node sent cannot break the table.
pub fn render<const N: usize>(rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| fleetup::terminal::cell(&c).into_owned()))
        .collect();
    let rows = rows.as_slice();
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let rows = [["A".to_string(), "BB".into()], ["ccc".into(), "d".into()]];
        assert_eq!(super::render(&rows), "A    BB\nccc  d\n");
    }
}
