//! The README's Python example for medsentry.v1 (tests/clients/screen.py): stubs generated
//! from proto/ with grpcio-tools, run against the real server on a chest X-ray JPEG, a CR
//! DICOM and a file that is neither (refused with its reason, exit status 1).

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_screens_dicom_and_images() {
    let server = TestServer::ready(&[]).await;
    let gen = tempfile::tempdir().unwrap();
    let protoc = Command::new(test_python())
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo().join("proto"))
        .arg(format!("--python_out={}", gen.path().display()))
        .arg(format!("--grpc_python_out={}", gen.path().display()))
        .arg(repo().join("proto/medsentry/v1/sentry.proto"))
        .output()
        .unwrap();
    assert!(protoc.status.success(), "{}", String::from_utf8_lossy(&protoc.stderr));
    let junk = gen.path().join("notes.txt");
    std::fs::write(&junk, b"not an image").unwrap();
    let jpeg = data("chest_xray_kermany/images/test/NORMAL/IM-0001-0001.jpeg");
    let dicom = data("dicom/RG1_UNCR.dcm");
    let target = server.grpc.to_string();
    let run = move |files: Vec<std::path::PathBuf>| {
        Command::new(test_python())
            .arg(repo().join("tests/clients/screen.py"))
            .args(["--target", &target])
            .args(files)
            .env("PYTHONPATH", gen.path())
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| run(vec![jpeg.clone(), dicom.clone(), junk.clone()]));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "a refused file makes the exit status 1");
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    let verdicts = ["CLEAN", "SUSPICIOUS", "ADVERSARIAL", "OUT_OF_DISTRIBUTION"];
    assert!(verdicts.contains(&lines[0][1]) && ["NORMAL", "PNEUMONIA"].contains(&lines[0][2]), "{text}");
    assert!(verdicts.contains(&lines[1][1]) && lines[1][4] == CHEST, "the DICOM is screened: {text}");
    assert_eq!(&lines[2][1..4], ["REFUSED", "INVALID_ARGUMENT", "unrecognized_format"], "{text}");
    let ok = tokio::task::block_in_place(|| run(vec![jpeg]));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stdout));
    server.stop().await.unwrap();
}
