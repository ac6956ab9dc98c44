//! [`PrimaryMonitor`]: the node's role, kept current from `/events`.

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::Client;
use super::events::Backoff;
use crate::error::Error;
use crate::mount::Role;

/// Follows `/events` in a background task and keeps this node's [`Role`] in a
/// [`tokio::sync::watch`] channel.
///
/// The role starts as [`Role::Unknown`], becomes what `init` says, follows `primaryChange`,
/// and falls back to [`Role::Unknown`] while the API is unreachable (reconnecting with the
/// stream's capped backoff). Dropping the monitor stops the task at once; receivers obtained
/// from [`PrimaryMonitor::subscribe`] then see the channel closed. Must be created inside a
/// tokio runtime.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> litefs::Result<()> {
/// use litefs::http::{Client, PrimaryMonitor};
/// let monitor = PrimaryMonitor::spawn(&Client::new(Client::DEFAULT_URL)?);
/// let mut role = monitor.subscribe();
/// role.wait_for(|r| r.is_primary()).await.ok();
/// println!("now primary");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PrimaryMonitor {
    rx: watch::Receiver<Role>,
    task: JoinHandle<()>,
}

impl PrimaryMonitor {
    /// Starts monitoring with the default [`Backoff`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let client = litefs::http::Client::new("http://127.0.0.1:9").unwrap();
    /// let monitor = litefs::http::PrimaryMonitor::spawn(&client);
    /// assert_eq!(monitor.role(), litefs::Role::Unknown);
    /// # }
    /// ```
    pub fn spawn(client: &Client) -> PrimaryMonitor {
        PrimaryMonitor::spawn_with(client, Backoff::default())
    }

    /// Starts monitoring with a custom reconnection backoff.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # use std::time::Duration;
    /// let client = litefs::http::Client::new("http://127.0.0.1:9").unwrap();
    /// let backoff = litefs::http::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    /// let monitor = litefs::http::PrimaryMonitor::spawn_with(&client, backoff);
    /// # drop(monitor); }
    /// ```
    pub fn spawn_with(client: &Client, backoff: Backoff) -> PrimaryMonitor {
        let (tx, rx) = watch::channel(Role::Unknown);
        let mut events = client.events_with(backoff);
        let task = tokio::spawn(async move {
            // The stream never ends and waits between reconnections, so this loop never spins;
            // it stops when the monitor aborts it.
            while let Some(item) = events.next().await {
                let role = match item {
                    Ok(event) => match event.role() {
                        Some(role) => role,
                        None => continue,
                    },
                    // A line we could not parse says nothing about the connection.
                    Err(Error::Parse(_)) => continue,
                    Err(_) => Role::Unknown,
                };
                tx.send_if_modified(|current| {
                    let changed = *current != role;
                    *current = role;
                    changed
                });
            }
        });
        PrimaryMonitor { rx, task }
    }

    /// The current role.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let client = litefs::http::Client::new("http://127.0.0.1:9").unwrap();
    /// # let monitor = litefs::http::PrimaryMonitor::spawn(&client);
    /// println!("{}", monitor.role());
    /// # }
    /// ```
    pub fn role(&self) -> Role {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every role change (`changed()`, `wait_for()`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let client = litefs::http::Client::new("http://127.0.0.1:9").unwrap();
    /// # let monitor = litefs::http::PrimaryMonitor::spawn(&client);
    /// let rx = monitor.subscribe();
    /// assert_eq!(*rx.borrow(), litefs::Role::Unknown);
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.rx.clone()
    }
}

impl Drop for PrimaryMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}
