//! Rows read once for many parents (the newest runs of a page of agents, of threads) and
//! handed out without copies: each parent gets a range of the one answer.

use std::{collections::HashMap, hash::Hash, ops::Range, sync::Arc};

/// The rows one parent gets of an answer read for many parents at once: a range of the shared
/// answer, so that handing them to the parent (a batch hands out clones) copies no row. A
/// page's runs were each cloned, strings and all, once per agent: about 2% of the page's CPU.
pub struct SharedRows<T> {
    rows: Arc<Vec<T>>,
    range: Range<usize>,
}

impl<T> Clone for SharedRows<T> {
    fn clone(&self) -> Self {
        Self {
            rows: self.rows.clone(),
            range: self.range.clone(),
        }
    }
}

impl<T> Default for SharedRows<T> {
    fn default() -> Self {
        Self {
            rows: Arc::new(Vec::new()),
            range: 0..0,
        }
    }
}

impl<T> From<Vec<T>> for SharedRows<T> {
    fn from(rows: Vec<T>) -> Self {
        let range = 0..rows.len();
        Self {
            rows: Arc::new(rows),
            range,
        }
    }
}

impl<T> SharedRows<T> {
    /// Splits `rows` among parents: `parent` gives each row's parent, `parents` the (distinct)
    /// parents in the order wanted; each parent's rows keep their order. Rows are moved only
    /// when they are not already grouped in that order (a lateral read per parent returns them
    /// grouped).
    pub fn split<P: Copy + Eq + Hash>(
        mut rows: Vec<T>,
        parents: &[P],
        parent: impl Fn(&T) -> Option<P>,
    ) -> Vec<(P, Self)> {
        let position: HashMap<P, usize> =
            parents.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        // Rows of no listed parent sort last and are left out.
        let rank = |row: &T| {
            parent(row)
                .and_then(|p| position.get(&p).copied())
                .unwrap_or(parents.len())
        };
        if !rows.is_sorted_by_key(&rank) {
            rows.sort_by_key(&rank);
        }
        let ranks: Vec<usize> = rows.iter().map(&rank).collect();
        let rows = Arc::new(rows);
        let mut start = 0;
        parents
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let end = start + ranks[start..].iter().take_while(|r| **r == i).count();
                let range = start..end;
                start = end;
                (
                    *p,
                    Self {
                        rows: rows.clone(),
                        range,
                    },
                )
            })
            .collect()
    }

    /// The rows, in order, each shared (not copied).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = SharedRow<T>> + '_ {
        self.range
            .clone()
            .map(|i| SharedRow(Inner::Shared(self.rows.clone(), i)))
    }
}

/// One row an object shows: its own, or one of a shared answer ([`SharedRows`]). Reads as
/// `&T`. Small (an object's row is moved around as its futures are built), hence the box.
pub struct SharedRow<T>(Inner<T>);

enum Inner<T> {
    Own(Box<T>),
    Shared(Arc<Vec<T>>, usize),
}

impl<T> From<T> for SharedRow<T> {
    fn from(row: T) -> Self {
        Self(Inner::Own(Box::new(row)))
    }
}

impl<T> std::ops::Deref for SharedRow<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Inner::Own(row) => row,
            Inner::Shared(rows, i) => &rows[*i],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_rows_split_among_parents_in_order_without_copies() {
        // Rows as (parent, n): grouped out of order, one of an unlisted parent.
        let rows = vec![(2, 'a'), (1, 'b'), (2, 'c'), (9, 'x'), (1, 'd')];
        let split = SharedRows::split(rows, &[1, 2, 3], |row| Some(row.0));
        let got: Vec<(i32, Vec<char>)> = split
            .iter()
            .map(|(p, rows)| (*p, rows.iter().map(|row| row.1).collect()))
            .collect();
        assert_eq!(
            got,
            vec![(1, vec!['b', 'd']), (2, vec!['a', 'c']), (3, vec![])]
        );
        assert!(split[2].1.iter().next().is_none());
        // Grouped already: kept as is, shared by every parent.
        let split = SharedRows::split(vec![(1, 'a'), (2, 'b')], &[1, 2], |row| Some(row.0));
        assert!(Arc::ptr_eq(&split[0].1.rows, &split[1].1.rows));
        assert_eq!(*split[1].1.iter().next().unwrap(), (2, 'b'));
        let own: SharedRow<(i32, char)> = (7, 'z').into();
        assert_eq!(own.1, 'z');
    }
}
