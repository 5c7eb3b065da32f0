//! deploy/ checked with real tools: promtool on the Prometheus config and alert rules (and
//! the rules' unit tests), hadolint on the Dockerfiles, the Kubernetes manifests against the
//! Kubernetes schemas (kubernetes-validate) and the ServiceMonitor against the
//! prometheus-operator schema, the compose file against the compose-spec schema.
//!
//! promtool comes from PATH, the linters and validators from target/tools/: scripts/test.sh
//! installs all of them. tests/deploy_prometheus.rs runs a real Prometheus.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deploy::{deploy, on_path, run_ok};
use common::*;
use serde_json::Value;

const MODEL: &str = "chest-xray-pneumonia";

/// A linter or validator installed by scripts/test.sh under target/tools/.
fn tool(rel: &str) -> PathBuf {
    let path = repo().join("target/tools").join(rel);
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which installs the deploy/ linters and validators into target/tools/", path.display());
    path
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml")).collect();
    files.sort();
    files
}

/// Every YAML document of a file as JSON (PyYAML of the validators' venv: the crate has no
/// YAML parser and the test needs none elsewhere).
fn yaml_docs(file: &Path) -> Vec<Value> {
    let script = "import sys, json, yaml\nprint(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))";
    let out = run_ok(Command::new(tool("venv/bin/python")).args(["-c", script]).arg(file));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn promtool_accepts_the_config_and_rules_and_the_rule_unit_tests_pass() {
    let promtool = on_path("promtool");
    let out = run_ok(Command::new(&promtool).args(["check", "config"]).arg(deploy("prometheus/prometheus.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(Command::new(&promtool).args(["check", "rules"]).arg(deploy("prometheus/rules.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
    let out = run_ok(Command::new(&promtool).args(["test", "rules"]).arg(deploy("prometheus/rules_test.yml")));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_dockerfiles_pass_hadolint() {
    let hadolint = tool("venv/bin/hadolint");
    for file in ["container/Dockerfile", "container/Dockerfile.gpu"] {
        // Style findings fail too; the Dockerfiles say inline why they ignore a rule.
        run_ok(Command::new(&hadolint).args(["--no-color", "--failure-threshold", "style"]).arg(deploy(file)));
    }
    // .dockerignore is an allow-list: whatever a Dockerfile copies from the context must be
    // let back in, and the training pipeline (its venv, its data) must stay out.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let rules: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore starts by excluding everything");
    assert!(rules.contains(&"models/training/"), ".dockerignore must keep models/training/ out");
    for file in ["container/Dockerfile", "container/Dockerfile.gpu"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        for line in text.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from=")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            for src in &words[1..words.len() - 1] {
                let src = src.trim_end_matches('/');
                assert!(
                    rules.contains(&format!("!{src}").as_str()) || rules.contains(&format!("!{src}/").as_str()),
                    "{file} copies {src}, which .dockerignore leaves out"
                );
            }
        }
    }
}

#[test]
fn the_kubernetes_manifests_match_the_kubernetes_and_prometheus_operator_schemas() {
    let dir = deploy("kubernetes");
    let files = yaml_files(&dir);
    let docs: Vec<Value> = files.iter().flat_map(|f| yaml_docs(f)).collect();
    let core = docs.iter().filter(|d| d["apiVersion"] != "monitoring.coreos.com/v1").count();
    // The oldest Kubernetes the manifests claim (ContainerResource in the HPA is GA from
    // 1.30) and the newest schemas the validator carries.
    for version in ["1.30", "1.37"] {
        let out = run_ok(Command::new(tool("venv/bin/kubernetes-validate")).args(["--strict", "-k", version]).args(&files));
        assert!(!out.contains("ERROR"), "{out}");
        assert_eq!(out.matches(" passed ").count(), core, "every core object is validated against {version}:\n{out}");
        for line in out.lines().filter(|l| l.starts_with("WARN")) {
            assert!(line.contains("ServiceMonitor"), "only the operator's kind lacks a Kubernetes schema: {line}");
        }
    }
    let out = run_ok(Command::new("node").arg(repo().join("tests/deploy/servicemonitor.mjs")).arg(tool("npm")).args(&files));
    assert!(out.contains("OK") && out.contains("servicemonitor.yaml"), "{out}");

    // The pieces must fit together: the policy the ConfigMap carries is one the sidecar
    // accepts for its bundle, the compose file runs the same settings, and the Deployment
    // mounts it, the quarantine folder it names, and probes the admin port.
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
    let policy_text = find("ConfigMap")["data"]["policy.toml"].as_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let policy = medsentry::policy::Policy::load(Path::new(&write_policy(tmp.path(), &policy_text)), &[MODEL.to_string()])
        .expect("the ConfigMap's policy is valid for the served bundle");
    let compose_policy = std::fs::read_to_string(deploy("compose/policy.toml")).unwrap();
    assert_eq!(
        toml::from_str::<toml::Value>(&policy_text).unwrap(),
        toml::from_str::<toml::Value>(&compose_policy).unwrap(),
        "deploy/compose/policy.toml and the ConfigMap's policy.toml have different settings"
    );
    let pod = &find("Deployment")["spec"]["template"]["spec"];
    let sidecar = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "medsentry").expect("a medsentry container");
    assert!(sidecar["args"].as_array().unwrap().iter().any(|a| a == "--policy=/etc/medsentry/policy.toml"), "{}", sidecar["args"]);
    let mounts = sidecar["volumeMounts"].as_array().unwrap();
    let mount_of = |vol: &str| mounts.iter().find(|m| m["name"] == vol).map(|m| m["mountPath"].as_str().unwrap().to_string());
    assert_eq!(mount_of("policy").as_deref(), Some("/etc/medsentry"));
    let quarantine_dir = policy.quarantine.as_ref().expect("the policy keeps a quarantine").dir.display().to_string();
    assert_eq!(mount_of("quarantine"), Some(quarantine_dir), "the policy's quarantine dir is a mounted volume");
    assert!(pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "policy" && v["configMap"]["name"] == find("ConfigMap")["metadata"]["name"]));
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        sidecar["env"].as_array().unwrap().iter().any(|e| e["name"] == "MEDSENTRY_UPSTREAM" && e["value"] == "127.0.0.1:8001"),
        "proxy mode to the Pod's inference container"
    );
    let ports: BTreeMap<String, u64> =
        sidecar["ports"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_u64().unwrap())).collect();
    assert_eq!(ports.get("grpc"), Some(&50051));
    assert_eq!(ports.get("metrics"), Some(&9464));
    assert_eq!(ports.get("http"), Some(&8080));
    assert!(
        sidecar["env"].as_array().unwrap().iter().any(|e| e["name"] == "MEDSENTRY_HTTP_LISTEN" && e["value"] == "0.0.0.0:8080"),
        "the REST port the container declares is the one the sidecar listens on"
    );
    // The REST port must not collide with the inference container's ports (one network
    // namespace per Pod).
    let inference = pod["containers"].as_array().unwrap().iter().find(|c| c["name"] != "medsentry").expect("the inference container");
    assert!(inference["ports"].as_array().unwrap().iter().all(|p| p["containerPort"].as_u64() != Some(8080)));
    for p in find("Service")["spec"]["ports"].as_array().unwrap() {
        assert!(ports.contains_key(p["targetPort"].as_str().unwrap()), "Service port {p} targets a named port of the medsentry container");
    }
    // The admin port binds loopback unless told: the pod must say so for its probes and scraper.
    assert!(
        sidecar["env"].as_array().unwrap().iter().any(|e| e["name"] == "MEDSENTRY_ADMIN_LISTEN" && e["value"] == "0.0.0.0:9464"),
        "the Deployment exposes the admin port explicitly"
    );
    // Every port the NetworkPolicy opens is opened to a named set of peers, never to all.
    let rules = find("NetworkPolicy")["spec"]["ingress"].as_array().unwrap().clone();
    let mut opened = Vec::new();
    for rule in &rules {
        assert!(rule["from"].as_array().is_some_and(|f| !f.is_empty()), "ingress rule {rule} has no `from`: open to every pod");
        opened.extend(rule["ports"].as_array().unwrap().iter().map(|p| p["port"].as_u64().unwrap()));
    }
    opened.sort();
    assert_eq!(opened, [8002, 8080, 9464, 50051], "gRPC, REST, admin and the inference server's metrics, nothing else");
}

#[test]
fn the_compose_file_matches_the_compose_spec() {
    let out = run_ok(Command::new(tool("venv/bin/check-jsonschema")).args(["--builtin-schema", "vendor.compose-spec"]).arg(deploy("compose/compose.yml")));
    assert!(out.contains("ok"), "{out}");
}
