//! Stream mode over TLS: a server with a certificate from a private CA is used once the
//! CA file is configured, and refused without it.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use analytics_service::startup::Application;

use super::{InProcessLoader, NatsCluster, Rig, assert_loaded_exactly_once, capture, post_events};

/// A CA and a server certificate for 127.0.0.1 signed by it, made with `openssl`.
fn make_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(status.status.success(), "openssl {args:?}: {status:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_the_configured_ca_is_trusted_and_nothing_else() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let path = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let (cert, key) = (path("server.pem"), path("server.key"));
    let nats = NatsCluster::start_with(1, &["--tls", "--tlscert", &cert, "--tlskey", &key]).await;
    let Rig {
        nats: _nats,
        database,
        settings: mut untrusted,
    } = Rig::on(nats, 1).await;
    untrusted.nats.tls_required = true;
    let mut trusted = untrusted.clone();
    trusted.nats.tls_ca_file = path("ca.pem");

    let refused = Application::build(&untrusted).await;
    let app = Arc::new(capture(&trusted).await);
    let acked = post_events(&app, 20, 2).await;
    let loader = InProcessLoader::start(&trusted).await;

    let error = format!("{:#}", refused.err().expect("an unknown CA is refused"));
    assert!(error.contains("NATS"), "{error}");
    assert_eq!(acked.refused, 0);
    let rows = assert_loaded_exactly_once(&database.url(), &acked).await;
    assert_eq!(rows, 20);
    loader.stop().await;
}
