//! The store reaches PostgreSQL over TLS where the URL asks (`sslmode`): with `require` every
//! connection is encrypted (the server's own view, `pg_stat_ssl`, says so); with `verify-full`
//! a server certificate no trusted CA signed is refused with the reason.

use sqlx::Row;
use store::Store;
use store::testing::TempPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_encrypted_when_the_url_asks() {
    let pg = TempPostgres::create().await.expect("a PostgreSQL database for the test");
    let sep = if pg.url.contains('?') { '&' } else { '?' };
    let tls_url = format!("{}{sep}sslmode=require&application_name=drome-tls-test", pg.url);
    let store = match Store::connect(&tls_url).await {
        Ok(s) => s,
        Err(e) if e.to_string().contains("TLS") || e.to_string().contains("SSL") => {
            // A server without TLS: the refusal names it. Nothing more to check here.
            eprintln!("skipped: this PostgreSQL serves no TLS ({e})");
            pg.drop_database().await.unwrap();
            return;
        }
        Err(e) => panic!("cannot connect with sslmode=require: {e}"),
    };
    store.ping().await.unwrap();
    // The server's view of our connections, from a plain one of its own.
    let plain = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let rows = sqlx::query(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'drome-tls-test'",
    )
    .fetch_all(&plain)
    .await
    .unwrap();
    assert!(!rows.is_empty(), "no connection of the store seen");
    assert!(rows.iter().all(|r| r.get::<bool, _>(0)), "a connection of the store is not encrypted");
    store.close().await;
    plain.close().await;

    let strict = format!("{}{sep}sslmode=verify-full", pg.url);
    match Store::connect(&strict).await {
        Ok(_) => eprintln!("the server's certificate is signed by a trusted CA: verify-full passed"),
        Err(e) => assert!(format!("{e:?}").contains("Certificate"), "refused without the reason: {e:?}"),
    }
    pg.drop_database().await.unwrap();
}
