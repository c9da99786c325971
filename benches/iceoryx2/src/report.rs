//! The table: medians over rounds, and ratios taken within each round.

use crate::{Figures, Measure, Subject, Wait, SIZES};

/// One line of the table: a figure of the runs of one kind.
struct Row {
    measure: Measure,
    wait: Wait,
    size: usize,
    /// Which of a run's figures: p50 (0) or p99 (1) of a latency run; a
    /// throughput run has one.
    figure: usize,
}

fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for measure in Measure::ALL {
        for size in SIZES {
            for wait in Wait::ALL {
                let figures = match measure {
                    Measure::Latency => 0..2,
                    Measure::Throughput => 0..1,
                };
                for figure in figures {
                    rows.push(Row {
                        measure,
                        wait,
                        size,
                        figure,
                    });
                }
            }
        }
    }
    rows
}

impl Row {
    fn label(&self) -> String {
        let size = if self.size >= 1024 {
            format!("{} KiB", self.size / 1024)
        } else {
            format!("{} B", self.size)
        };
        let what = match (self.measure, self.figure) {
            (Measure::Latency, 0) => "one-way p50",
            (Measure::Latency, _) => "one-way p99",
            (Measure::Throughput, _) => "throughput",
        };
        let wait = match self.wait {
            Wait::Spin => "busy-poll",
            Wait::Block => "blocking",
        };
        format!("{size}, {what}, {wait}")
    }

    /// The subject's figure in each round, one way for latency; empty when
    /// the subject has no such run.
    fn per_round(&self, figures: &Figures, subject: Subject) -> Vec<f64> {
        let scale = match self.measure {
            // Round trips, halved.
            Measure::Latency => 0.5,
            Measure::Throughput => 1.0,
        };
        figures
            .get(&(subject, self.wait, self.measure, self.size))
            .map(|rounds| rounds.iter().map(|r| r[self.figure] * scale).collect())
            .unwrap_or_default()
    }

    fn format(&self, value: Option<f64>) -> String {
        match (value, self.measure) {
            (None, _) => "–".into(),
            (Some(ns), Measure::Latency) if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
            (Some(ns), Measure::Latency) if ns >= 1e4 => format!("{:.1} µs", ns / 1e3),
            (Some(ns), Measure::Latency) => format!("{ns:.0} ns"),
            (Some(r), Measure::Throughput) if r >= 1e6 => format!("{:.2} M msg/s", r / 1e6),
            (Some(r), Measure::Throughput) => format!("{:.0} k msg/s", r / 1e3),
        }
    }
}

pub fn print(figures: &Figures, rounds: usize) {
    println!(
        "\nmedians of {rounds} round(s); latency is one way (RTT/2); a ratio is the median of \
         each round's ipc-lib / iceoryx2\n(below 1 for latency, above 1 for throughput: ipc-lib \
         ahead)\n"
    );
    println!(
        "| case | ipc-lib | ipc-lib zero-copy | iceoryx2 copying | iceoryx2 zero-copy | floor \
         | ipc-lib / iceoryx2 copying | ipc-lib zero-copy / iceoryx2 zero-copy |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows() {
        let cell = |s| row.format(median(row.per_round(figures, s)));
        let ratio = |ours, theirs| {
            let ours = row.per_round(figures, ours);
            let theirs = row.per_round(figures, theirs);
            let each = ours.iter().zip(&theirs).map(|(a, b)| a / b).collect();
            median(each).map_or("–".into(), |r| format!("{r:.2}"))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.label(),
            cell(Subject::IpcLib),
            cell(Subject::IpcLibZeroCopy),
            cell(Subject::IoxCopy),
            cell(Subject::IoxZeroCopy),
            cell(Subject::Floor),
            ratio(Subject::IpcLib, Subject::IoxCopy),
            ratio(Subject::IpcLibZeroCopy, Subject::IoxZeroCopy),
        );
    }
}

/// `None` for no values: unknown is not zero.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}
