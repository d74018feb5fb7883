//! The etcd extensions keep old encodings decoding, and bound what a hostile message can make
//! the decoder do (see `nest` in `types.rs`).

use keel_storage::codec;
use keel_storage::*;

/// A txn as the release before the extensions wrote it, byte by byte (postcard: variant index,
/// then the fields; lengths as varints), behind the format byte.
const OLD_TXN_REQUEST: &[u8] = &[
    1, // FORMAT_V1
    0, // session: None
    2, // Command::Txn
    1, // one compare
    1, b'k', // key
    0,    // CompareOp::Equal
    1, 1, // CompareTarget::Version(1)
    1, // one success op
    0, // TxnOp::Put
    1, b'k', 1, b'v', 0, // key, value, prev_kv
    0, // no failure ops
];

const OLD_TXN_RESPONSE: &[u8] = &[
    1, // FORMAT_V1
    5, // revision
    3, // CommandResult::Txn
    1, // succeeded
    1, // one response
    0, // OpResult::Put
    0, // prev_kv: None
];

#[test]
fn old_txns_and_their_results_decode_and_encode_as_before() {
    let request = Request::new(Command::Txn(Txn {
        compares: vec![Compare {
            key: b"k".to_vec(),
            op: CompareOp::Equal,
            target: CompareTarget::Version(1),
        }],
        success: vec![TxnOp::Put(PutOp {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })],
        failure: vec![],
    }));
    assert_eq!(codec::decode::<Request>(OLD_TXN_REQUEST).unwrap(), request);
    assert_eq!(codec::encode(&request), OLD_TXN_REQUEST);
    let response = Response {
        revision: 5,
        result: CommandResult::Txn(TxnResult {
            succeeded: true,
            responses: vec![OpResult::Put(PutResult { prev_kv: None })],
        }),
    };
    assert_eq!(codec::decode::<Response>(OLD_TXN_RESPONSE).unwrap(), response);
    assert_eq!(codec::encode(&response), OLD_TXN_RESPONSE);
}

#[test]
fn new_variants_round_trip() {
    let inner = Txn {
        compares: vec![Compare {
            key: b"a".to_vec(),
            op: CompareOp::Less,
            target: CompareTarget::Range {
                end: vec![],
                target: Box::new(CompareTarget::Lease(3)),
            },
        }],
        success: vec![TxnOp::PutWith(PutWith {
            put: PutOp {
                key: b"k".to_vec(),
                value: vec![],
                prev_kv: true,
            },
            lease: 0,
            ignore_value: true,
            ignore_lease: true,
        })],
        failure: vec![],
    };
    let outer = Request::new(Command::Txn(Txn {
        compares: vec![],
        success: vec![TxnOp::Txn(inner)],
        failure: vec![],
    }));
    assert_eq!(codec::decode::<Request>(&codec::encode(&outer)).unwrap(), outer);
    let compact = Request::new(Command::Compact(7));
    assert_eq!(codec::decode::<Request>(&codec::encode(&compact)).unwrap(), compact);
    let result = Response {
        revision: 1,
        result: CommandResult::Txn(TxnResult {
            succeeded: false,
            responses: vec![OpResult::Txn(TxnResult {
                succeeded: true,
                responses: vec![],
            })],
        }),
    };
    assert_eq!(codec::decode::<Response>(&codec::encode(&result)).unwrap(), result);
}

/// A request whose txn holds `levels` txns nested one in the other.
fn nested_request(levels: usize) -> Vec<u8> {
    let mut bytes = vec![1, 0, 2]; // format, no session, Command::Txn
    for _ in 0..levels {
        bytes.extend([0, 1, 4]); // no compares, one success op: TxnOp::Txn
    }
    bytes.extend([0, 0, 0]); // the innermost txn: empty
    bytes.extend(std::iter::repeat_n(0, levels)); // each level's failure ops: none
    bytes
}

/// A response whose txn result holds `levels` results nested one in the other.
fn nested_response(levels: usize) -> Vec<u8> {
    let mut bytes = vec![1, 0, 3]; // format, revision 0, CommandResult::Txn
    for _ in 0..levels {
        bytes.extend([1, 1, 3]); // succeeded, one response: OpResult::Txn
    }
    bytes.extend([1, 0]); // the innermost result: empty
    bytes
}

#[test]
fn nesting_is_bounded_when_decoding() {
    let max = MAX_TXN_NESTING as usize;
    assert!(codec::decode::<Request>(&nested_request(max)).is_ok());
    assert!(codec::decode::<Request>(&nested_request(max + 1)).is_err());
    assert!(codec::decode::<Response>(&nested_response(max)).is_ok());
    assert!(codec::decode::<Response>(&nested_response(max + 1)).is_err());
    // A million levels fail fast on a small stack instead of overflowing it.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let request = codec::decode::<Request>(&nested_request(1_000_000)).is_err();
            let response = codec::decode::<Response>(&nested_response(1_000_000)).is_err();
            // The guard unwound: a legitimate message decodes on this thread afterwards.
            let again = codec::decode::<Request>(&nested_request(max)).is_ok();
            (request, response, again)
        })
        .unwrap();
    assert_eq!(handle.join().unwrap(), (true, true, true));
}

#[test]
fn a_range_compare_inside_a_range_compare_does_not_decode() {
    let cmp = |target| Compare {
        key: b"k".to_vec(),
        op: CompareOp::Equal,
        target,
    };
    let range = |target| CompareTarget::Range {
        end: vec![],
        target: Box::new(target),
    };
    let one = |c: Compare| {
        Request::new(Command::Txn(Txn {
            compares: vec![c],
            success: vec![],
            failure: vec![],
        }))
    };
    let fine = one(cmp(range(CompareTarget::Version(1))));
    assert!(codec::decode::<Request>(&codec::encode(&fine)).is_ok());
    let twice = one(cmp(range(range(CompareTarget::Version(1)))));
    assert!(codec::decode::<Request>(&codec::encode(&twice)).is_err());
    // And the guard was left: the next range compare decodes.
    assert!(codec::decode::<Request>(&codec::encode(&fine)).is_ok());
}
