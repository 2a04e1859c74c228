//! The per-connection CM state machine (sans-IO).
//!
//! It consumes wire messages ([`Msg`]), socket EOF and local verbs calls, and answers with
//! [`Output`]s the I/O layer executes in order: messages to send, events to queue on the
//! id's channel, and "move the QP to ERR".

use crate::proto::{Msg, Rep};

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Active: REQ sent, waiting for REP or REJ.
    ReqSent,
    /// Active: REP received; the application still has to see CONNECT_RESPONSE/ESTABLISHED.
    RepRcvd,
    /// Passive: REQ received, CONNECT_REQUEST queued, not yet accepted or rejected.
    ReqRcvd,
    /// Passive: REP sent (`rdma_accept`), waiting for RTU.
    RepSent,
    /// Both: connected.
    Established,
    /// Local `rdma_disconnect` sent DREQ; waiting for DREP.
    DreqSent,
    /// Terminal: disconnected, rejected, or failed. No further events.
    Closed,
}

/// Events the machine asks the I/O layer to report (one per `rdma_cm_event`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Active side: the REP arrived (turned into ESTABLISHED when the id has a QP).
    ConnectResponse(Rep),
    /// Passive side: RTU arrived.
    Established,
    /// Active side: REJ arrived.
    Rejected {
        /// IB reject reason.
        reason: u8,
        /// Reject private data.
        private_data: Vec<u8>,
    },
    /// The connection is over (DREQ/DREP, or the peer vanished after establishment).
    Disconnected,
    /// Active side: the peer vanished while the connection was being set up.
    ConnectError,
    /// Passive side: the peer vanished without a word before ESTABLISHED (RDMA_CM_EVENT_UNREACHABLE,
    /// status -ETIMEDOUT, as after the IB CM's REP retries ran out).
    Unreachable,
}

/// What the I/O layer must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this message on the connection socket.
    Send(Msg),
    /// Queue this event for the id.
    Event(Event),
    /// Move the id's QP (if any) to the ERR state.
    QpToError,
    /// Close the connection socket.
    Close,
}

/// A local call that is not legal in the current state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("rdma_cm: {op} is not valid in connection state {state:?}")]
pub struct InvalidState {
    /// The attempted operation.
    pub op: &'static str,
    /// The state it was attempted in.
    pub state: State,
}

/// One CM connection's protocol state.
#[derive(Debug)]
pub struct Conn {
    state: State,
}

impl Conn {
    /// A connection whose REQ has just been sent (active side).
    pub fn active() -> Self {
        Conn {
            state: State::ReqSent,
        }
    }

    /// A connection whose REQ has just been received (passive side).
    pub fn passive() -> Self {
        Conn {
            state: State::ReqRcvd,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// A message arrived from the peer. Unexpected messages are answered with `Err` and
    /// change nothing; the caller logs them.
    pub fn on_msg(&mut self, msg: Msg) -> Result<Vec<Output>, InvalidState> {
        use State::*;
        let out = match (self.state, msg) {
            (ReqSent, Msg::Rep(rep)) => {
                self.state = RepRcvd;
                vec![Output::Event(Event::ConnectResponse(rep))]
            }
            (
                ReqSent,
                Msg::Rej {
                    reason,
                    private_data,
                },
            ) => {
                self.state = Closed;
                vec![
                    Output::QpToError,
                    Output::Event(Event::Rejected {
                        reason,
                        private_data,
                    }),
                    Output::Close,
                ]
            }
            (RepSent, Msg::Rtu) => {
                self.state = Established;
                vec![Output::Event(Event::Established)]
            }
            // The active side gave up on a pending REQ, or failed to process our REP.
            (ReqRcvd | RepSent, Msg::Rej { .. }) => {
                self.state = Closed;
                vec![
                    Output::QpToError,
                    Output::Event(Event::ConnectError),
                    Output::Close,
                ]
            }
            (Established | RepSent | RepRcvd, Msg::Dreq) => {
                self.state = Closed;
                vec![Output::Send(Msg::Drep), Output::Event(Event::Disconnected)]
            }
            (DreqSent, Msg::Drep | Msg::Dreq) => {
                self.state = Closed;
                vec![Output::Event(Event::Disconnected), Output::Close]
            }
            (state, msg) => {
                return Err(InvalidState {
                    op: match msg {
                        Msg::Req(_) => "REQ",
                        Msg::Rep(_) => "REP",
                        Msg::Rtu => "RTU",
                        Msg::Rej { .. } => "REJ",
                        Msg::Dreq => "DREQ",
                        Msg::Drep => "DREP",
                    },
                    state,
                })
            }
        };
        Ok(out)
    }

    /// The connection socket hit EOF or an error: the peer process is gone (its kernel
    /// closed the socket), or the peer dropped the connection by fault injection.
    ///
    /// A passive side still setting up gets what the kernel CM of a dead process sends
    /// (`cm_destroy_id`): REJECTED with `IB_CM_REJ_TIMEOUT` while the REQ waits for
    /// `rdma_accept`, REJECTED with consumer reason 28 once the REP was sent.
    pub fn on_eof(&mut self) -> Vec<Output> {
        use State::*;
        let prev = self.state;
        self.state = Closed;
        let rejected = |reason| {
            vec![
                Output::QpToError,
                Output::Event(Event::Rejected {
                    reason,
                    private_data: Vec::new(),
                }),
                Output::Close,
            ]
        };
        match prev {
            Established | DreqSent => vec![
                Output::QpToError,
                Output::Event(Event::Disconnected),
                Output::Close,
            ],
            ReqRcvd => rejected(crate::proto::REJ_PEER_GONE_IN_REQ),
            RepSent => rejected(crate::proto::REJ_CONSUMER),
            ReqSent | RepRcvd => vec![
                Output::QpToError,
                Output::Event(Event::ConnectError),
                Output::Close,
            ],
            Closed => vec![Output::Close],
        }
    }

    /// This side drops the connection (fault kind f): the peer vanished without a word.
    /// A passive side still setting up gets UNREACHABLE (the REP would never be answered);
    /// every other state behaves as [`Conn::on_eof`].
    pub fn on_vanish(&mut self) -> Vec<Output> {
        if matches!(self.state, State::ReqRcvd | State::RepSent) {
            self.state = State::Closed;
            return vec![
                Output::QpToError,
                Output::Event(Event::Unreachable),
                Output::Close,
            ];
        }
        self.on_eof()
    }

    /// `rdma_accept` on the passive side (after the QP moved to RTS).
    pub fn accept(&mut self, rep: Rep) -> Result<Vec<Output>, InvalidState> {
        self.expect(State::ReqRcvd, "rdma_accept")?;
        self.state = State::RepSent;
        Ok(vec![Output::Send(Msg::Rep(rep))])
    }

    /// `rdma_reject` on the passive side.
    pub fn reject(
        &mut self,
        reason: u8,
        private_data: Vec<u8>,
    ) -> Result<Vec<Output>, InvalidState> {
        self.expect(State::ReqRcvd, "rdma_reject")?;
        self.state = State::Closed;
        Ok(vec![
            Output::Send(Msg::Rej {
                reason,
                private_data,
            }),
            Output::Close,
        ])
    }

    /// Active side, after the application saw the REP: send RTU (`rdma_establish`, or
    /// implicitly in `rdma_get_cm_event` when the id has a QP).
    pub fn establish(&mut self) -> Result<Vec<Output>, InvalidState> {
        self.expect(State::RepRcvd, "rdma_establish")?;
        self.state = State::Established;
        Ok(vec![Output::Send(Msg::Rtu)])
    }

    /// Active side: processing the REP locally failed (QP transition); tell the peer.
    pub fn fail_rep(&mut self) -> Vec<Output> {
        self.state = State::Closed;
        vec![
            Output::QpToError,
            Output::Send(Msg::Rej {
                reason: crate::proto::REJ_CONSUMER,
                private_data: Vec::new(),
            }),
            Output::Close,
        ]
    }

    /// `rdma_disconnect`. Idempotent once the connection is over: it then only moves the
    /// QP to ERR, as librdmacm does on IB.
    pub fn disconnect(&mut self) -> Result<Vec<Output>, InvalidState> {
        use State::*;
        match self.state {
            Established | RepSent | RepRcvd => {
                self.state = DreqSent;
                Ok(vec![Output::QpToError, Output::Send(Msg::Dreq)])
            }
            DreqSent | Closed => Ok(vec![Output::QpToError]),
            ReqSent | ReqRcvd => Err(InvalidState {
                op: "rdma_disconnect",
                state: self.state,
            }),
        }
    }

    fn expect(&self, want: State, op: &'static str) -> Result<(), InvalidState> {
        if self.state == want {
            Ok(())
        } else {
            Err(InvalidState {
                op,
                state: self.state,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep() -> Rep {
        Rep {
            qpn: 5,
            psn: 1,
            lid: 1,
            srq: false,
            responder_resources: 1,
            initiator_depth: 1,
            flow_control: 0,
            rnr_retry_count: 7,
            private_data: vec![9],
        }
    }

    #[test]
    fn full_connect_and_disconnect() {
        let mut a = Conn::active();
        let mut p = Conn::passive();
        let out = p.accept(rep()).unwrap();
        let Output::Send(m) = &out[0] else { panic!() };
        let out = a.on_msg(m.clone()).unwrap();
        assert_eq!(out, vec![Output::Event(Event::ConnectResponse(rep()))]);
        let out = a.establish().unwrap();
        assert_eq!(a.state(), State::Established);
        let Output::Send(rtu) = &out[0] else { panic!() };
        assert_eq!(
            p.on_msg(rtu.clone()).unwrap(),
            vec![Output::Event(Event::Established)]
        );
        // Active disconnects: its QP goes to ERR first, then DREQ.
        let out = a.disconnect().unwrap();
        assert_eq!(out, vec![Output::QpToError, Output::Send(Msg::Dreq)]);
        let out = p.on_msg(Msg::Dreq).unwrap();
        assert_eq!(
            out,
            vec![Output::Send(Msg::Drep), Output::Event(Event::Disconnected)]
        );
        // The passive app calls rdma_disconnect on DISCONNECTED: no second event.
        assert_eq!(p.disconnect().unwrap(), vec![Output::QpToError]);
        let out = a.on_msg(Msg::Drep).unwrap();
        assert_eq!(out, vec![Output::Event(Event::Disconnected), Output::Close]);
        assert_eq!(a.state(), State::Closed);
    }

    #[test]
    fn simultaneous_disconnect_gives_one_event_each() {
        let mut a = Conn {
            state: State::Established,
        };
        a.disconnect().unwrap();
        let out = a.on_msg(Msg::Dreq).unwrap();
        assert_eq!(out, vec![Output::Event(Event::Disconnected), Output::Close]);
        assert!(a.on_msg(Msg::Drep).is_err());
        assert_eq!(a.on_eof(), vec![Output::Close]);
    }

    #[test]
    fn reject_reaches_active_with_data() {
        let mut p = Conn::passive();
        let out = p.reject(28, vec![1, 2]).unwrap();
        let Output::Send(m) = &out[0] else { panic!() };
        let mut a = Conn::active();
        let out = a.on_msg(m.clone()).unwrap();
        assert_eq!(
            out[1],
            Output::Event(Event::Rejected {
                reason: 28,
                private_data: vec![1, 2]
            })
        );
        assert_eq!(out[0], Output::QpToError);
        assert!(p.accept(rep()).is_err());
    }

    #[test]
    fn peer_death_is_disconnect_or_connect_error() {
        let mut e = Conn {
            state: State::Established,
        };
        let out = e.on_eof();
        assert_eq!(out[0], Output::QpToError);
        assert_eq!(out[1], Output::Event(Event::Disconnected));
        let mut c = Conn::active();
        assert_eq!(c.on_eof()[1], Output::Event(Event::ConnectError));
        assert!(c.disconnect().is_ok());
    }

    #[test]
    fn passive_side_of_a_peer_gone_before_established_is_rejected_or_unreachable() {
        let rejected = |reason| {
            Output::Event(Event::Rejected {
                reason,
                private_data: Vec::new(),
            })
        };
        let mut p = Conn::passive();
        let out = p.on_eof();
        assert_eq!(out[0], Output::QpToError);
        assert_eq!(out[1], rejected(crate::proto::REJ_PEER_GONE_IN_REQ));
        assert!(p.accept(rep()).is_err(), "accept after the peer died");
        let mut p = Conn::passive();
        p.accept(rep()).unwrap();
        assert_eq!(p.on_eof()[1], rejected(crate::proto::REJ_CONSUMER));
        let mut p = Conn::passive();
        p.accept(rep()).unwrap();
        assert_eq!(p.on_vanish()[1], Output::Event(Event::Unreachable));
        assert_eq!(p.state(), State::Closed);
        let mut e = Conn {
            state: State::Established,
        };
        assert_eq!(e.on_vanish()[1], Output::Event(Event::Disconnected));
    }

    #[test]
    fn illegal_local_calls_are_errors() {
        let mut a = Conn::active();
        assert!(a.disconnect().is_err());
        assert!(a.accept(rep()).is_err());
        assert!(a.establish().is_err());
        assert!(a.on_msg(Msg::Rtu).is_err());
        assert_eq!(a.state(), State::ReqSent);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Input {
        Msg(u8),
        Eof,
        Vanish,
        Accept,
        Reject,
        Establish,
        Disconnect,
        FailRep,
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            (0u8..6).prop_map(Input::Msg),
            Just(Input::Eof),
            Just(Input::Vanish),
            Just(Input::Accept),
            Just(Input::Reject),
            Just(Input::Establish),
            Just(Input::Disconnect),
            Just(Input::FailRep),
        ]
    }

    fn msg(i: u8) -> Msg {
        match i {
            0 => Msg::Rep(Rep {
                qpn: 1,
                psn: 1,
                lid: 1,
                srq: false,
                responder_resources: 1,
                initiator_depth: 1,
                flow_control: 0,
                rnr_retry_count: 7,
                private_data: vec![],
            }),
            1 => Msg::Rtu,
            2 => Msg::Rej {
                reason: 28,
                private_data: vec![],
            },
            3 => Msg::Dreq,
            4 => Msg::Drep,
            _ => Msg::Rtu,
        }
    }

    proptest! {
        /// Whatever arrives in whatever order: no panic, at most one terminal event
        /// (DISCONNECTED / REJECTED / CONNECT_ERROR) per connection, nothing but `Close` and
        /// `QpToError` after it, and once Closed the machine stays Closed.
        #[test]
        fn at_most_one_terminal_event(active in any::<bool>(), inputs in proptest::collection::vec(input(), 0..40)) {
            let mut c = if active { Conn::active() } else { Conn::passive() };
            let mut terminal = 0;
            for i in inputs {
                let before = c.state();
                let outs = match i {
                    Input::Msg(m) => c.on_msg(msg(m)).unwrap_or_default(),
                    Input::Eof => c.on_eof(),
                    Input::Vanish => c.on_vanish(),
                    Input::Accept => c.accept(match msg(0) { Msg::Rep(r) => r, _ => unreachable!() }).unwrap_or_default(),
                    Input::Reject => c.reject(28, vec![]).unwrap_or_default(),
                    Input::Establish => c.establish().unwrap_or_default(),
                    Input::Disconnect => c.disconnect().unwrap_or_default(),
                    Input::FailRep => if c.state() == State::RepRcvd { c.fail_rep() } else { vec![] },
                };
                if before == State::Closed {
                    prop_assert_eq!(c.state(), State::Closed);
                    for o in &outs {
                        prop_assert!(matches!(o, Output::Close | Output::QpToError), "{o:?} after Closed");
                    }
                }
                terminal += outs.iter().filter(|o| matches!(o,
                    Output::Event(Event::Disconnected | Event::Rejected { .. } | Event::ConnectError | Event::Unreachable))).count();
                prop_assert!(terminal <= 1, "{terminal} terminal events");
            }
        }
    }
}
