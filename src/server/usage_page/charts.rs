//! The usage page's charts, as inline SVG: no script, no style attribute (the page's
//! Content-Security-Policy allows neither), presentation attributes only. Every number is text
//! too (a `<title>` on each mark, a value beside each bar), so the page reads without the charts.

use std::fmt::Write;

use crate::telemetry::usage_view::OperatorDay;

/// Colours for the clients of the per-day chart (Tableau 10); the last is for the others.
const PALETTE: [&str; 9] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
    "#bab0ac",
];

/// Clients with a colour of their own in the per-day chart; the rest are summed as "others".
pub const NAMED_CLIENTS: usize = PALETTE.len() - 1;

/// The colour of the `i`th client of the legend (the others' after the named ones).
pub fn colour(i: usize) -> &'static str {
    PALETTE[i.min(PALETTE.len() - 1)]
}

/// Tokens per day, one bar per day, stacked by client: `clients` are the named ones in legend
/// order; whatever else a day holds is the "others" segment.
pub fn tokens_per_day(days: &[OperatorDay], clients: &[String]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 260.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 24.0;
    const TOP: f64 = 8.0;
    let top_total = days.iter().map(|d| d.sums.tokens()).max().unwrap_or(0);
    let scale_max = nice_ceiling(top_total);
    let plot_h = H - BOTTOM - TOP;
    let slot = (W - LEFT - 4.0) / days.len().max(1) as f64;
    let bar = (slot * 0.72).max(1.0);
    let y = |tokens: u64| TOP + plot_h - plot_h * tokens as f64 / scale_max as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg class="chart" viewBox="0 0 {W} {H}" width="100%" role="img" aria-labelledby="per-day-title"><title id="per-day-title">Tokens per day, by client</title>"##
    );
    for step in 0..=4u64 {
        let value = scale_max * step / 4;
        let at = y(value);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{W}" y1="{at:.1}" y2="{at:.1}" stroke="#d0d7de" stroke-width="1"/><text x="{}" y="{:.1}" text-anchor="end" font-size="12" fill="#57606a">{}</text>"##,
            LEFT - 6.0,
            at + 4.0,
            compact(value)
        );
    }
    for (i, day) in days.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let mut base = 0u64;
        let mut segments: Vec<(usize, &str, u64)> = clients
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let tokens = day.by_client.get(name).map_or(0, |s| s.tokens());
                (c, name.as_str(), tokens)
            })
            .collect();
        let named: u64 = segments.iter().map(|s| s.2).sum();
        segments.push((
            NAMED_CLIENTS,
            "others",
            day.sums.tokens().saturating_sub(named),
        ));
        for (c, name, tokens) in segments {
            if tokens == 0 {
                continue;
            }
            let (y1, y0) = (y(base + tokens), y(base));
            base += tokens;
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{y1:.1}" width="{bar:.1}" height="{:.1}" fill="{}"><title>{} {}: {} tokens</title></rect>"##,
                (y0 - y1).max(0.5),
                colour(c),
                day.date,
                super::escape(name),
                super::group(tokens)
            );
        }
        if i % 5 == 4 || i + 1 == days.len() {
            // The last label ends at its bar, so that it is not cut at the edge.
            let (anchor, at) = if i + 1 == days.len() {
                ("end", x + bar)
            } else {
                ("middle", x + bar / 2.0)
            };
            let _ = write!(
                svg,
                r##"<text x="{at:.1}" y="{}" text-anchor="{anchor}" font-size="12" fill="#57606a">{}</text>"##,
                H - 6.0,
                &day.date[5..]
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A horizontal bar, `fraction` (0 to 1) of the way, in its own small SVG for a table cell.
pub fn bar(fraction: f64, fill: &str) -> String {
    let width = (fraction.clamp(0.0, 1.0) * 100.0).max(if fraction > 0.0 { 0.5 } else { 0.0 });
    format!(
        r##"<svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" width="100%" height="12" aria-hidden="true"><rect width="100" height="10" fill="#eaeef2"/><rect width="{width:.2}" height="10" fill="{fill}"/></svg>"##
    )
}

/// The colour of a used share: green, amber past 75%, red past 90%.
pub fn headroom_colour(fraction: f64) -> &'static str {
    if fraction >= 0.9 {
        "#cf222e"
    } else if fraction >= 0.75 {
        "#bf8700"
    } else {
        "#2da44e"
    }
}

/// The scale's top: a round number at or above `n`.
fn nice_ceiling(n: u64) -> u64 {
    if n == 0 {
        return 4;
    }
    let mut magnitude = 1u64;
    while magnitude.saturating_mul(10) <= n {
        magnitude *= 10;
    }
    [1, 2, 4, 5, 8, 10]
        .iter()
        .map(|m| m * magnitude)
        .find(|&top| top >= n)
        .unwrap_or(n)
}

/// `950`, `12k`, `3.4M`.
fn compact(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => trim(n as f64 / 1e3, "k"),
        1_000_000..1_000_000_000 => trim(n as f64 / 1e6, "M"),
        _ => trim(n as f64 / 1e9, "G"),
    }
}

fn trim(value: f64, unit: &str) -> String {
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_and_labels_short() {
        assert_eq!(nice_ceiling(0), 4);
        assert_eq!(nice_ceiling(7), 8);
        assert_eq!(nice_ceiling(1234), 2000);
        assert_eq!(nice_ceiling(5000), 5000);
        assert_eq!(nice_ceiling(81_000), 100_000);
        assert_eq!(compact(950), "950");
        assert_eq!(compact(1500), "1.5k");
        assert_eq!(compact(25_000), "25k");
        assert_eq!(compact(3_400_000), "3.4M");
    }
}
