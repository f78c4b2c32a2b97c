//! A TCP proxy in front of PostgreSQL that a test can take down and bring back: an outage or a
//! restart of the database as the server sees it (connections cut, new ones refused).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tokio::{net::TcpListener, sync::watch};

/// The proxy; it runs until the test ends.
pub struct DbProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    up: Arc<AtomicBool>,
    kill: watch::Sender<u64>,
}

impl DbProxy {
    /// A proxy to the PostgreSQL server of `database_url`.
    pub async fn start(database_url: &str) -> Self {
        let config: tokio_postgres::Config = database_url.parse().expect("database URL");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = format!("127.0.0.1:{port}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (kill, _) = watch::channel(0u64);
        let (flag, killer) = (up.clone(), kill.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let target = target.clone();
                let mut killed = killer.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Self { port, up, kill }
    }

    /// `database_url` (same user and database) through this proxy.
    pub fn url_for(&self, database_url: &str) -> String {
        let config: tokio_postgres::Config = database_url.parse().expect("database URL");
        let db_name = database_url.rsplit('/').next().unwrap_or_default();
        match config.get_user() {
            Some(user) => format!("postgres://{user}@127.0.0.1:{}/{db_name}", self.port),
            None => format!("postgres://127.0.0.1:{}/{db_name}", self.port),
        }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.kill.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
