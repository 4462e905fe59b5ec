//! The overview's job counts: totals per state, and a kind × state table whose numbers are live
//! blocks of their own (ids by position, so a row keeps its ids while its kind stays listed).

use super::super::view;
use crate::queue::stats;

/// Kinds listed before the rest are summed into one row.
const MAX_KINDS: usize = 20;
/// Job states in the order the counts table shows them.
const STATES: [&str; 6] = [
    "queued",
    "running",
    "waiting",
    "succeeded",
    "failed",
    "cancelled",
];

/// A number that live updates replace on its own, by id.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub id: String,
    pub n: String,
}

impl Cell {
    fn new(id: String, n: i64) -> Self {
        Self {
            id,
            n: thousands(n),
        }
    }
}

/// One state's total, linking to the jobs list filtered by it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTotal {
    pub label: &'static str,
    pub class: &'static str,
    pub href: String,
    pub count: Cell,
}

/// One kind's counts in [`STATES`] order, then its total.
#[derive(Debug, Clone, PartialEq)]
pub struct KindRow {
    pub kind: String,
    /// The jobs list filtered by this kind; `None` for the row of the remaining kinds.
    pub href: Option<String>,
    pub cells: Vec<Cell>,
}

/// Turns (state, kind, count) rows into the state totals, the kind × state table and its totals.
pub fn tabulate(counts: &[stats::KindCount]) -> (Vec<StateTotal>, Vec<KindRow>, Vec<Cell>) {
    let mut by_kind: Vec<(String, [i64; 6])> = Vec::new();
    let mut totals = [0i64; 6];
    for c in counts {
        let Some(col) = STATES.iter().position(|s| *s == c.state.as_str()) else {
            continue;
        };
        totals[col] += c.count;
        match by_kind.iter_mut().find(|(k, _)| *k == c.kind) {
            Some((_, row)) => row[col] += c.count,
            None => {
                let mut row = [0i64; 6];
                row[col] = c.count;
                by_kind.push((c.kind.clone(), row));
            }
        }
    }
    by_kind.sort_by(|a, b| {
        let (ta, tb) = (a.1.iter().sum::<i64>(), b.1.iter().sum::<i64>());
        tb.cmp(&ta).then_with(|| a.0.cmp(&b.0))
    });
    let rest = by_kind.split_off(by_kind.len().min(MAX_KINDS));
    // By name, so rows keep their places (and their ids) as counts change.
    by_kind.sort_by(|a, b| a.0.cmp(&b.0));
    let cells = |r: usize, counts: &[i64; 6]| -> Vec<Cell> {
        let all = counts.iter().sum();
        let numbers = counts.iter().copied().chain([all]);
        numbers
            .enumerate()
            .map(|(c, n)| Cell::new(format!("ov-k{r}-{c}"), n))
            .collect()
    };
    let mut kinds: Vec<KindRow> = by_kind
        .iter()
        .enumerate()
        .map(|(r, (k, counts))| KindRow {
            kind: k.clone(),
            href: Some(format!("/jobs?kind={}", view::url_encode(k))),
            cells: cells(r, counts),
        })
        .collect();
    if !rest.is_empty() {
        let mut sum = [0i64; 6];
        for (_, r) in &rest {
            for (s, n) in sum.iter_mut().zip(r) {
                *s += n;
            }
        }
        kinds.push(KindRow {
            kind: format!("{} more kinds", rest.len()),
            href: None,
            cells: cells(kinds.len(), &sum),
        });
    }
    let states = STATES
        .iter()
        .zip(totals)
        .map(|(&s, n)| StateTotal {
            label: view::state_label(s),
            class: s,
            href: format!("/jobs?state={s}"),
            count: Cell::new(format!("ov-n-{s}"), n),
        })
        .collect();
    let all: i64 = totals.iter().sum();
    let totals = totals
        .iter()
        .copied()
        .chain([all])
        .enumerate()
        .map(|(c, n)| Cell::new(format!("ov-t-{c}"), n))
        .collect();
    (states, kinds, totals)
}

/// `12345678` as `12,345,678`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobState;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-12345), "-12,345");
    }

    #[test]
    fn tabulate_sums_states_and_kinds() {
        let c = |state, kind: &str, count| stats::KindCount {
            state,
            kind: kind.into(),
            count,
        };
        let rows = [
            c(JobState::Queued, "b", 2),
            c(JobState::Failed, "a", 1),
            c(JobState::Succeeded, "b", 1000),
        ];
        let (states, kinds, totals) = tabulate(&rows);
        assert_eq!(states[0].count.n, "2");
        assert_eq!(states[0].count.id, "ov-n-queued");
        assert_eq!(states[4].label, "✗ failed");
        // Rows are by name; each ends with its total.
        assert_eq!(kinds[0].kind, "a");
        assert_eq!(kinds[0].href.as_deref(), Some("/jobs?kind=a"));
        assert_eq!(kinds[1].cells[6].n, "1,002");
        assert_eq!(kinds[1].cells[6].id, "ov-k1-6");
        assert_eq!(totals[3].n, "1,000");
        assert_eq!(totals[6].n, "1,003");
    }

    #[test]
    fn kinds_past_the_limit_are_summed() {
        let rows: Vec<_> = (0..25)
            .map(|i| stats::KindCount {
                state: JobState::Succeeded,
                kind: format!("k{i:02}"),
                count: 100 - i,
            })
            .collect();
        let (_, kinds, _) = tabulate(&rows);
        assert_eq!(kinds.len(), MAX_KINDS + 1);
        let last = &kinds[MAX_KINDS];
        assert_eq!(last.kind, "5 more kinds");
        assert!(last.href.is_none());
        // k20..k24 hold 80 + 79 + 78 + 77 + 76.
        assert_eq!(last.cells[6].n, "390");
    }
}
