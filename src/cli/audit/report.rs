//! The audit's tallies and its two renderings: report.json (for a deployment pipeline) and
//! REPORT.md (for the security review), with the same columns as the bundles' reports.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::target::{Answer, Outcome, Target};
use super::{AuditArgs, ImageResult};

#[derive(Debug, Clone, Serialize)]
pub struct AttackSummary {
    pub attack: String,
    /// The budget or the replayed file.
    pub setting: String,
    pub queries_per_image: usize,
    pub images: usize,
    pub queries: usize,
    /// Top label moved away from the clean answer.
    pub fooled: usize,
    /// The final input was flagged: ADVERSARIAL, SUSPICIOUS or refused by the policy.
    pub flagged: usize,
    pub refused: usize,
    /// Answered OUT_OF_DISTRIBUTION (not an attack verdict, but not passed either).
    pub out_of_distribution: usize,
    /// Fooled and answered CLEAN (or not screened): what got through.
    pub fooled_and_passed: usize,
    pub per_image: Vec<ImageResult>,
}

impl AttackSummary {
    pub fn new(attack: &str, setting: &str, queries_per_image: usize, per_image: Vec<ImageResult>) -> AttackSummary {
        let count = |f: &dyn Fn(&ImageResult) -> bool| per_image.iter().filter(|r| f(r)).count();
        AttackSummary {
            attack: attack.into(),
            setting: setting.into(),
            queries_per_image,
            images: per_image.len(),
            queries: per_image.iter().map(|r| r.queries).sum(),
            fooled: count(&|r| r.fooled),
            flagged: count(&|r| r.outcome.is_some_and(Outcome::flagged)),
            refused: count(&|r| r.outcome == Some(Outcome::Refused)),
            out_of_distribution: count(&|r| r.outcome == Some(Outcome::OutOfDistribution)),
            fooled_and_passed: count(&|r| r.fooled && r.outcome.is_some_and(Outcome::passed)),
            per_image,
        }
    }

    pub fn fooled_and_passed_rate(&self) -> f64 {
        self.fooled_and_passed as f64 / self.images.max(1) as f64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub target: String,
    /// The API the queries went through.
    pub protocol: super::Protocol,
    pub model: String,
    pub eps_255: u8,
    pub seed: u64,
    pub images: Vec<String>,
    /// Clean pass: how the endpoint answered the unmodified images.
    pub clean: BTreeMap<String, usize>,
    pub clean_flagged_rate: f64,
    pub attacks: Vec<AttackSummary>,
    /// Every query of the run (clean pass included), by outcome.
    pub outcomes: BTreeMap<String, usize>,
    pub total_queries: usize,
    /// Query (1-based, whole run) at which the endpoint first reported a campaign alarm.
    pub campaign_alarm_at_query: Option<usize>,
    pub stopped_early: bool,
    pub seconds: f64,
}

fn key(o: Outcome) -> String {
    serde_json::to_value(o).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

impl AuditReport {
    pub fn new(args: &AuditArgs, images: &[String], clean: &[Answer], attacks: Vec<AttackSummary>, t: &Target, seconds: f64) -> AuditReport {
        let mut clean_counts = BTreeMap::new();
        for a in clean {
            *clean_counts.entry(key(a.verdict)).or_insert(0) += 1;
        }
        let flagged = clean.iter().filter(|a| a.verdict.flagged()).count();
        AuditReport {
            target: args.target.clone(),
            protocol: args.protocol,
            model: if args.model.is_empty() { "(default)".into() } else { args.model.clone() },
            eps_255: args.eps,
            seed: args.seed,
            images: images.to_vec(),
            clean: clean_counts,
            clean_flagged_rate: flagged as f64 / clean.len().max(1) as f64,
            attacks,
            outcomes: t.outcomes.iter().map(|(o, n)| (key(*o), *n)).collect(),
            total_queries: t.sent,
            campaign_alarm_at_query: t.first_alarm,
            stopped_early: t.out_of_time(),
            seconds,
        }
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("REPORT.md"), self.markdown())?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let pct = |n: usize, d: usize| if d == 0 { "–".to_string() } else { format!("{:.1}", 100.0 * n as f64 / d as f64) };
        let mut s = format!(
            "# medsentry audit: {} ({}) model {}\n\n{} images, Linf budget {}/255, seed {}; {} queries in {:.0} s{}.\n\n",
            self.target,
            serde_json::to_value(self.protocol).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            self.model,
            self.images.len(),
            self.eps_255,
            self.seed,
            self.total_queries,
            self.seconds,
            if self.stopped_early { " (stopped at --max-seconds: partial)" } else { "" }
        );
        s += &format!("Clean images flagged (ADVERSARIAL, SUSPICIOUS or refused): {:.1} %; answers {:?}.\n\n", 100.0 * self.clean_flagged_rate, self.clean);
        s += "| attack | setting | queries/image | images | queries | fooled % | flagged % | refused % | out of distribution % | fooled and passed % |\n";
        s += "|---|---|---|---|---|---|---|---|---|---|\n";
        for a in &self.attacks {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                a.attack,
                a.setting,
                a.queries_per_image,
                a.images,
                a.queries,
                pct(a.fooled, a.images),
                pct(a.flagged, a.images),
                pct(a.refused, a.images),
                pct(a.out_of_distribution, a.images),
                pct(a.fooled_and_passed, a.images)
            );
        }
        s += &format!(
            "\nfooled = the top label moved from the clean answer (Boundary: within the Linf budget); flagged = the attack's final input \
             was answered ADVERSARIAL or SUSPICIOUS or refused; fooled and passed = fooled and answered CLEAN. Campaign alarm: {}. \
             Every query is listed in queries.jsonl (sha256 of what was sent, the answer).\n",
            self.campaign_alarm_at_query.map(|q| format!("first reported at query {q}")).unwrap_or_else(|| "never reported".into())
        );
        s
    }
}
