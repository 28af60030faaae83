//! The axes every SVG plot of the compiler draws (the report's candidate scatter, the sweep's
//! throughput plot): one place for the frame, the tick labels and the axis titles.

use std::fmt::Write;

/// A plot's size and margins, pixels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
    /// Left margin (the y axis).
    pub l: f64,
    /// Bottom margin (the x axis).
    pub b: f64,
}

impl Frame {
    /// Pixel x of the value `x` on an axis from 0 to `xmax`.
    pub fn x(&self, x: f64, xmax: f64) -> f64 {
        self.l + x / xmax * (self.w - self.l - 20.0)
    }

    /// Pixel y of the value `y` on an axis from 0 to `ymax`.
    pub fn y(&self, y: f64, ymax: f64) -> f64 {
        self.h - self.b - y / ymax * (self.h - self.b - 20.0)
    }

    /// Appends the x and y axes from 0 to `xmax` and `ymax`, five labelled ticks on each, the x
    /// axis's title under it and the y axis's, turned, at `y_title_x`.
    pub fn axes(
        &self,
        s: &mut String,
        (xmax, ymax): (f64, f64),
        x_title: &str,
        y_title: &str,
        y_title_x: f64,
    ) {
        let Frame { w, h, l, b } = *self;
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#000\"/><line x1=\"{l}\" y1=\"20\" x2=\"{l}\" y2=\"{}\" stroke=\"#000\"/>",
            h - b,
            w - 20.0,
            h - b,
            h - b
        );
        for i in 0..=4 {
            let (gx, gy) = (xmax * i as f64 / 4.0, ymax * i as f64 / 4.0);
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{gx:.0}</text><text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{gy:.0}</text>",
                self.x(gx, xmax),
                h - b + 15.0,
                l - 4.0,
                self.y(gy, ymax) + 4.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{x_title}</text><text x=\"{y_title_x}\" y=\"{}\" font-size=\"12\" transform=\"rotate(-90 {y_title_x} {})\" text-anchor=\"middle\">{y_title}</text>",
            (l + w) / 2.0,
            h - 12.0,
            h / 2.0,
            h / 2.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_place_ticks_on_the_scale_and_title_both_axes() {
        let f = Frame {
            w: 800.0,
            h: 500.0,
            l: 90.0,
            b: 50.0,
        };
        let mut s = String::new();
        f.axes(&mut s, (200.0, 40.0), "devices", "tokens/s", 16.0);
        assert_eq!(s.lines().count(), 7, "{s}");
        // The last tick sits at the end of each axis.
        assert!(
            s.contains(
                "<text x=\"780.0\" y=\"465\" font-size=\"11\" text-anchor=\"middle\">200</text>"
            ),
            "{s}"
        );
        assert!(
            s.contains("<text x=\"86\" y=\"24.0\" font-size=\"11\" text-anchor=\"end\">40</text>"),
            "{s}"
        );
        assert!(
            s.contains(">devices</text>")
                && s.contains("rotate(-90 16 250)")
                && s.contains(">tokens/s</text>")
        );
    }
}
