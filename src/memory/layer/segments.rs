//! A chunk's new tokens as query segments (`infinity-former.md` §9.7: each run of `block_len` new
//! tokens selects its own archive blocks), laid out so that every segment of one length is read in
//! one batched call instead of one call per segment.

use tch::Tensor;

/// `count` segments of `len` new tokens each, the first starting at new token `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub from: i64,
    pub count: i64,
    pub len: i64,
}

/// T new tokens cut into segments of `len`: the whole segments, then the shorter rest (if any).
pub fn cut(t: i64, len: i64) -> Vec<Segments> {
    let whole = t / len;
    let rest = t - whole * len;
    let whole = (whole > 0).then_some(Segments {
        from: 0,
        count: whole,
        len,
    });
    let rest = (rest > 0).then_some(Segments {
        from: t - rest,
        count: 1,
        len: rest,
    });
    whole.into_iter().chain(rest).collect()
}

impl Segments {
    /// These segments' rows of `grouped` `[B, H_kv, G, T, E]` (G query heads per key/value head)
    /// as `[B, H_kv, S, G·len, E]`: each segment's G·len query rows side by side, the layout of one
    /// batched product per key/value head.
    pub fn gather(&self, grouped: &Tensor) -> Tensor {
        let (b, h, g, _, e) = grouped.size5().expect("rows are [B, H_kv, G, T, E]");
        grouped
            .narrow(3, self.from, self.count * self.len)
            .reshape([b, h, g, self.count, self.len, e])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, h, self.count, g * self.len, e])
    }

    /// The inverse of [`Segments::gather`]: `rows` `[B, H_kv, S, G·len, E]` back to
    /// `[B, H_kv, G, S·len, E]`, these segments' tokens in order.
    pub fn scatter(&self, rows: &Tensor, g: i64) -> Tensor {
        let (b, h, _, _, e) = rows.size5().expect("rows are [B, H_kv, S, G·len, E]");
        rows.reshape([b, h, self.count, g, self.len, e])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([b, h, g, self.count * self.len, e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn cuts_whole_segments_then_the_rest() {
        let s = |from, count, len| Segments { from, count, len };
        assert_eq!(cut(150, 64), vec![s(0, 2, 64), s(128, 1, 22)]);
        assert_eq!(cut(128, 64), vec![s(0, 2, 64)]);
        assert_eq!(cut(1, 64), vec![s(0, 1, 1)]);
    }

    /// Gathering puts segment s's rows (every head g, tokens s·len..) together, and scattering
    /// gives back the tokens in order.
    #[test]
    fn gathers_each_segments_rows_together_and_scatters_them_back() {
        let (g, t, e) = (3, 10, 2);
        let grouped =
            Tensor::arange(2 * g * t * e, (Kind::Int64, Device::Cpu)).view([1, 2, g, t, e]);
        for segments in cut(t, 4) {
            let rows = segments.gather(&grouped);
            assert_eq!(rows.size(), [1, 2, segments.count, g * segments.len, e]);
            // Head 1, segment 0, query head 2, its first token: token `from` of query head 2.
            let got = rows.get(0).get(1).get(0).get(2 * segments.len);
            let want = grouped.get(0).get(1).get(2).get(segments.from);
            assert!(got.equal(&want));
            let back = segments.scatter(&rows, g);
            assert!(back.equal(&grouped.narrow(3, segments.from, segments.count * segments.len)));
        }
    }
}
