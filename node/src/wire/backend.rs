//! What a served session acts on: the [`Backend`] that
//! [`crate::session::serve_backend`] drives with the requests of
//! `protocol::server::Server`. The machine decides the protocol (AUTH,
//! VERSION, BYPASS, modes, error answers, `-PLUS` shaping); a backend only
//! performs requests and moves payload bytes.
//!
//! Backends: one repository's [`Store`] ([`StoreBackend`]), a cluster's nodes
//! (`crate::gateway`), a special remote (`crate::proxy`).

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};

use protocol::server::{PutStart, Validity};
use protocol::{AssociatedFile, Key, Uuid};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{IoContext, Result};
use crate::store::{ContentLock, Store, Stored, Upload};

/// Size of the read and write buffers of a session, and of payload chunks.
pub const IO_BUFFER: usize = 1 << 20;

/// The answer to a `REMOVE`, or to a `PUT`'s `DATA`/`DATA-PRESENT`: whether
/// it succeeded, and the other repositories it changed (a gateway's nodes,
/// sent as `-PLUS` at v2+; empty for one repository).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    pub ok: bool,
    pub also: Vec<Uuid>,
}

impl Done {
    pub fn plain(ok: bool) -> Done {
        Done {
            ok,
            also: Vec::new(),
        }
    }
}

/// How a payload went out to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Every byte; whether the content stayed the same while read (`VALID`).
    Complete { valid: bool },
    /// The content could not give every byte (it vanished, shrank, or no
    /// node could finish). There is no in-band abort: the session ends.
    Broken(String),
}

/// A payload stream from the client, as a backend reads it.
pub trait PayloadReader: AsyncBufRead + Unpin + Send {}
impl<T: AsyncBufRead + Unpin + Send> PayloadReader for T {}

/// A stream to the client, as a backend writes payload bytes to it.
pub trait PayloadWriter: AsyncWrite + Unpin + Send {}
impl<T: AsyncWrite + Unpin + Send> PayloadWriter for T {}

/// What `protocol::server::ServerOutput`'s requests are performed on. Each
/// method answers one request; see that enum for when each is asked. A
/// failure of the backend is an answer (`FAILURE`, `ERROR`), never an `Err`:
/// only the client's stream fails a method.
pub trait Backend: Send {
    /// `CHECKPRESENT`: `Err` is sent as `ERROR <text>`.
    fn check_present(&mut self, key: &Key) -> impl Future<Output = Result<bool, String>> + Send;

    /// `LOCKCONTENT`: whether the content is now locked against removal.
    fn lock(&mut self, key: &Key) -> impl Future<Output = bool> + Send;

    /// `UNLOCKCONTENT`, or the connection was lost while locked (keep the
    /// lock for the retention period).
    fn unlock(&mut self, connection_lost: bool) -> impl Future<Output = ()> + Send;

    /// `REMOVE`/`REMOVE-BEFORE`: `Err` is sent as `ERROR <text>`.
    fn remove(
        &mut self,
        key: &Key,
        before: Option<i64>,
    ) -> impl Future<Output = Result<Done, String>> + Send;

    /// `GETTIMESTAMP`: monotonic seconds.
    fn timestamp(&mut self) -> impl Future<Output = i64> + Send;

    /// `BYPASS`: the repositories not to reach for this client (gateways).
    fn bypass(&mut self, uuids: Vec<Uuid>) -> impl Future<Output = ()> + Send {
        let _ = uuids;
        async {}
    }

    /// `PUT`: already here, or where the upload starts.
    fn prepare_put(
        &mut self,
        key: &Key,
        file: &AssociatedFile,
    ) -> impl Future<Output = PutStart> + Send;

    /// The client did not send `DATA` after `PUT-FROM`.
    fn abandon_put(&mut self, key: &Key) -> impl Future<Output = ()> + Send;

    /// Reads exactly `len` payload bytes from `reader` (the stream at
    /// `offset` of the content); returns whether they all arrived. The bytes
    /// are consumed whatever the backend does with them, so the stream stays
    /// in step.
    fn receive_payload<R: PayloadReader>(
        &mut self,
        reader: &mut R,
        key: &Key,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = bool> + Send;

    /// After the payload (and the client's `VALID`/`INVALID`): verify, store
    /// and record.
    fn commit(&mut self, key: &Key, validity: Validity) -> impl Future<Output = Done> + Send;

    /// `DATA-PRESENT`: the content was stored out of band; check and record.
    fn confirm_present(&mut self, key: &Key) -> impl Future<Output = Done> + Send;

    /// `GET` from `offset`: the content's size, `None` when absent.
    fn content_size(&mut self, key: &Key, offset: u64) -> impl Future<Output = Option<u64>> + Send;

    /// Writes `len` bytes of the content from `offset` to `writer` (always
    /// asked after a `Some` size, `len` possibly 0). `Err` is the client's
    /// stream failing.
    fn send_payload<W: PayloadWriter>(
        &mut self,
        writer: &mut W,
        key: &Key,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Sent>> + Send;
}

/// One repository's object store, for one session: the lock and the upload
/// in progress.
pub struct StoreBackend<'a> {
    store: &'a Store,
    lock: Option<ContentLock>,
    upload: Option<Upload>,
    buf: Vec<u8>,
}

impl<'a> StoreBackend<'a> {
    pub fn new(store: &'a Store) -> StoreBackend<'a> {
        StoreBackend {
            store,
            lock: None,
            upload: None,
            buf: Vec::new(),
        }
    }
}

impl Backend for StoreBackend<'_> {
    async fn check_present(&mut self, key: &Key) -> Result<bool, String> {
        Ok(self.store.contains(key))
    }

    async fn lock(&mut self, key: &Key) -> bool {
        match self.store.lock_shared(key) {
            Ok(Some(l)) => {
                self.lock = Some(l);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("lock {key}: {e}");
                false
            }
        }
    }

    async fn unlock(&mut self, connection_lost: bool) {
        if let Some(l) = self.lock.take()
            && connection_lost
            && let Err(e) = self.store.retain_lock(l.key())
        {
            tracing::warn!("cannot retain lock on {}: {e}", l.key());
        }
    }

    async fn remove(&mut self, key: &Key, before: Option<i64>) -> Result<Done, String> {
        match self.store.remove(key, before) {
            Ok(ok) => Ok(Done::plain(ok)),
            Err(e) => {
                tracing::warn!("remove {key}: {e}");
                Err(e.to_string())
            }
        }
    }

    async fn timestamp(&mut self) -> i64 {
        crate::clock::monotonic_seconds()
    }

    async fn prepare_put(&mut self, key: &Key, _file: &AssociatedFile) -> PutStart {
        if self.store.contains(key) {
            return PutStart::AlreadyHave(Vec::new());
        }
        let have = self.store.partial_size(key);
        // Refused before a byte is sent when it cannot fit.
        if let Some(size) = key.size()
            && let Some(why) = self.store.lacks_room(size.saturating_sub(have))
        {
            return PutStart::Refused(why);
        }
        PutStart::From(have)
    }

    async fn abandon_put(&mut self, _key: &Key) {}

    async fn receive_payload<R: PayloadReader>(
        &mut self,
        reader: &mut R,
        key: &Key,
        offset: u64,
        len: u64,
    ) -> bool {
        let mut upload = match self.store.begin_upload(key, offset) {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::warn!("cannot store {key}: {e}");
                None
            }
        };
        let complete = consume_payload(reader, len, |chunk| {
            if let Some(up) = &mut upload
                && let Err(e) = up.write(chunk)
            {
                tracing::warn!("cannot store {key}: {e}");
                upload = None;
            }
        })
        .await;
        self.upload = upload;
        complete
    }

    async fn commit(&mut self, key: &Key, validity: Validity) -> Done {
        let ok = match self.upload.take() {
            Some(up) if up.key() == key => match self.store.commit(up, validity) {
                Ok(Stored::Stored) => true,
                Ok(other) => {
                    tracing::info!("refused content for {key}: {other:?}");
                    false
                }
                Err(e) => {
                    tracing::warn!("storing {key}: {e}");
                    false
                }
            },
            _ => false,
        };
        Done::plain(ok)
    }

    async fn confirm_present(&mut self, key: &Key) -> Done {
        Done::plain(self.store.confirm_present(key))
    }

    async fn content_size(&mut self, key: &Key, _offset: u64) -> Option<u64> {
        self.store.content_size(key)
    }

    async fn send_payload<W: PayloadWriter>(
        &mut self,
        writer: &mut W,
        key: &Key,
        offset: u64,
        len: u64,
    ) -> Result<Sent> {
        let opened = match self.store.open_content(key) {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(Sent::Broken(format!("{key} vanished while being sent"))),
            Err(e) => return Ok(Sent::Broken(format!("opening {key}: {e}"))),
        };
        if self.buf.is_empty() {
            self.buf = vec![0u8; IO_BUFFER];
        }
        send_file(writer, opened, key, offset, len, &mut self.buf).await
    }
}

/// Reads exactly `len` payload bytes, handing each chunk to `sink`; returns
/// whether all arrived (a read error counts as the stream ending).
pub(crate) async fn consume_payload<R: PayloadReader>(
    reader: &mut R,
    len: u64,
    mut sink: impl FnMut(&[u8]) + Send,
) -> bool {
    let mut left = len;
    while left > 0 {
        let avail = match reader.fill_buf().await {
            Ok(a) if !a.is_empty() => a,
            _ => return false,
        };
        let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        sink(&avail[..n]);
        reader.consume(n);
        left -= n as u64;
    }
    true
}

/// Writes bytes `[offset, offset + len)` of an open content file (and its
/// size when opened). `Sent::Complete` says whether its size held while read.
pub(crate) async fn send_file<W: PayloadWriter>(
    writer: &mut W,
    (mut file, size_before): (std::fs::File, u64),
    key: &Key,
    offset: u64,
    len: u64,
    buf: &mut [u8],
) -> Result<Sent> {
    if let Err(e) = file.seek(SeekFrom::Start(offset)) {
        return Ok(Sent::Broken(format!("seeking in {key}: {e}")));
    }
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = match file.read(&mut buf[..n]) {
            Ok(0) => return Ok(Sent::Broken(format!("{key} shrank while being sent"))),
            Ok(got) => got,
            Err(e) => return Ok(Sent::Broken(format!("reading {key}: {e}"))),
        };
        writer
            .write_all(&buf[..got])
            .await
            .context(|| "p2p stream".into())?;
        left -= got as u64;
    }
    let size_after = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Sent::Complete {
        valid: size_after == size_before,
    })
}
