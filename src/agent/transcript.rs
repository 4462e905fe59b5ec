//! Reading a session for display: the transcript, its turns' job states and the running turn's
//! events, all from one snapshot together with the stream cursor they correspond to. A page
//! rendered from a [`Snapshot`] and then fed every event after [`Snapshot::cursor`] shows each
//! event exactly once.

use sqlx::PgPool;
use uuid::Uuid;

use super::sessions::turn_key;
use super::store::{self, Message, Session, TurnJob};
use crate::events::{Event, log};
use crate::queue::JobState;
use crate::queue::control::active_with_key;
use crate::store::Blobs;

/// The most events of one running turn a page replays.
const MAX_TURN_EVENTS: i64 = 20_000;

/// A session as of one stream cursor.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub session: Session,
    /// Every event up to here is reflected in the rest; later events are not.
    pub cursor: i64,
    pub messages: Vec<Message>,
    pub turns: Vec<TurnJob>,
    /// Unfinished turns, the running one first, then the queue in order.
    pub active: Vec<(Uuid, JobState)>,
    /// The running turn's events so far, to rebuild its partial reply exactly.
    pub running_events: Vec<Event>,
}

/// Reads session `id` of `project_id` in one snapshot; `None` if there is no such session.
/// Offloaded tool results and event payloads come resolved.
pub async fn snapshot(
    pool: &PgPool,
    blobs: &Blobs,
    project_id: Uuid,
    id: Uuid,
) -> Result<Option<Snapshot>, crate::queue::QueueError> {
    let mut tx = pool.begin().await?;
    store::snapshot_isolation(&mut tx).await?;
    let Some(session) = store::session(&mut tx, project_id, id, false).await? else {
        return Ok(None);
    };
    let cursor = log::stream_head(&mut *tx, id).await?;
    let mut messages = store::messages(&mut *tx, id).await?;
    let mut ids: Vec<Uuid> = messages.iter().map(|m| m.turn_id).collect();
    ids.dedup();
    let turns = store::turn_jobs(&mut *tx, project_id, &ids).await?;
    let active = active_with_key(&mut tx, project_id, &turn_key(id)).await?;
    let mut running_events = match active.first() {
        Some((turn, JobState::Running | JobState::Waiting)) => {
            log::read_after(&mut *tx, *turn, 0, MAX_TURN_EVENTS).await?
        }
        _ => Vec::new(),
    };
    tx.commit().await?;
    resolve(blobs, project_id, &mut messages, &mut running_events).await;
    Ok(Some(Snapshot {
        session,
        cursor,
        messages,
        turns,
        active,
        running_events,
    }))
}

/// One turn as of now: its job, messages and (while it runs) events, plus the session's queue.
#[derive(Debug, Clone)]
pub struct TurnNow {
    pub job: Option<TurnJob>,
    pub messages: Vec<Message>,
    pub events: Vec<Event>,
    pub active: Vec<(Uuid, JobState)>,
}

/// Reads one turn of session `session_id` for re-rendering it after the state change that was
/// the turn's event `upto_seq`; a running turn's events stop there, so the events after it, which
/// the page is sent next, are not shown twice.
pub async fn turn_now(
    pool: &PgPool,
    blobs: &Blobs,
    project_id: Uuid,
    session_id: Uuid,
    turn_id: Uuid,
    upto_seq: i64,
) -> Result<TurnNow, crate::queue::QueueError> {
    let mut tx = pool.begin().await?;
    store::snapshot_isolation(&mut tx).await?;
    let job = store::turn_jobs(&mut *tx, project_id, &[turn_id])
        .await?
        .into_iter()
        .next();
    let mut messages = store::turn_messages(&mut *tx, session_id, turn_id).await?;
    let active = active_with_key(&mut tx, project_id, &turn_key(session_id)).await?;
    let mut events = match &job {
        Some(j) if matches!(j.state, JobState::Running | JobState::Waiting) => {
            let mut events = log::read_after(&mut *tx, turn_id, 0, MAX_TURN_EVENTS).await?;
            events.retain(|e| e.seq <= upto_seq);
            events
        }
        _ => Vec::new(),
    };
    tx.commit().await?;
    resolve(blobs, project_id, &mut messages, &mut events).await;
    Ok(TurnNow {
        job,
        messages,
        events,
        active,
    })
}

/// Resolves offloaded tool results and event payloads (after the snapshot's transaction, so no
/// blob read holds it open).
async fn resolve(blobs: &Blobs, project_id: Uuid, messages: &mut [Message], events: &mut [Event]) {
    let values = messages
        .iter_mut()
        .filter(|m| m.role == "tool")
        .map(|m| &mut m.content)
        .chain(events.iter_mut().map(|e| &mut e.data))
        .collect();
    blobs.resolve_all(project_id, values).await;
}
