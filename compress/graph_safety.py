"""Which TensorFlow ops a SavedModel may run without ``--unsafe``: its graph, read as code.

A SavedModel is a program: loading it restores variables and its functions run when the
model is called, so an op such as ``WriteFile``, ``PyFunc`` or ``PrintV2`` (which can
print to a file) acts on the machine as surely as a Keras ``Lambda`` does. Before
TensorFlow loads a folder, :func:`unsafe_ops` reads its ``saved_model.pb`` with
TensorFlow's protobufs (nothing is loaded or run) and lists every op outside an
allow-list of pure math, array, neural-network, variable and control-flow ops; anything
else (file I/O, Python callbacks, embedded XLA modules, custom or unknown ops) needs the
user's ``--unsafe``.

Checkpoint ops are the one exception: the SavedModel's own saver reads and writes the
``variables/`` checkpoint, so ``RestoreV2`` may appear in what the saver's restore op
runs and ``SaveV2``/``MergeV2Checkpoints`` in what only its save op runs (loading never
saves); anywhere else (reachable from a signature or from any other node or function)
they are refused like any file I/O.

Example:

>>> from compress.graph_safety import read_saved_model, unsafe_ops
>>> unsafe_ops(read_saved_model("exported/"))                         # doctest: +SKIP
[('WriteFile', '__inference_serve_42')]
"""

from __future__ import annotations

from pathlib import Path

# Pure ops: their outputs depend only on their inputs (and on variables and resources of
# the model itself); none reads or writes files, runs Python or reaches the network.
_ARRAY = """
Const Identity IdentityN Placeholder PlaceholderWithDefault NoOp Snapshot StopGradient
PreventGradient CheckNumerics CheckNumericsV2 EnsureShape Assert Reshape Shape ShapeN
Size Rank ExpandDims Squeeze Transpose ConjugateTranspose Concat ConcatV2 ConcatOffset
Pack Unpack Split SplitV Slice StridedSlice TensorStridedSliceUpdate Tile Pad PadV2
MirrorPad Fill ZerosLike OnesLike Reverse ReverseV2 ReverseSequence Gather GatherV2
GatherNd ScatterNd TensorScatterUpdate TensorScatterAdd TensorScatterSub TensorScatterMax
TensorScatterMin Where Select SelectV2 BroadcastTo BroadcastArgs BroadcastGradientArgs
Range LinSpace OneHot Cast Bitcast Unique UniqueV2 UniqueWithCounts ListDiff Roll
MatrixBandPart MatrixDiag MatrixDiagV2 MatrixDiagV3 MatrixDiagPart MatrixDiagPartV2
MatrixDiagPartV3 MatrixSetDiag MatrixSetDiagV2 MatrixSetDiagV3 Diag DiagPart
DepthToSpace SpaceToDepth SpaceToBatchND BatchToSpaceND InvertPermutation TopKV2 ArgMax
ArgMin Cumsum Cumprod CumulativeLogsumexp UpperBound LowerBound Bucketize SparseToDense
ClipByValue ExtractImagePatches Empty DeepCopy InplaceUpdate InplaceAdd InplaceSub
"""
_MATH = """
Add AddV2 AddN Sub Mul MulNoNan Div DivNoNan RealDiv FloorDiv FloorMod TruncateDiv
TruncateMod Mod Neg Abs Sign Square SquaredDifference Sqrt Rsqrt Reciprocal Inv Exp Expm1
Log Log1p Pow Maximum Minimum Floor Ceil Round Rint Sin Cos Tan Asin Acos Atan Atan2 Sinh
Cosh Tanh Asinh Acosh Atanh Sigmoid Erf Erfc Erfinv Ndtri Lgamma Digamma IsNan IsInf
IsFinite Equal NotEqual Less LessEqual Greater GreaterEqual ApproximateEqual LogicalAnd
LogicalOr LogicalNot BitwiseAnd BitwiseOr BitwiseXor Invert LeftShift RightShift Sum Prod
Mean Max Min All Any EuclideanNorm MatMul BatchMatMul BatchMatMulV2 BatchMatMulV3 Einsum
Cross Xlogy Xdivy Xlog1py SegmentSum SegmentMean SegmentMax SegmentMin SegmentProd
UnsortedSegmentSum UnsortedSegmentMax UnsortedSegmentMin UnsortedSegmentProd Complex Real
Imag ComplexAbs Angle Conj FFT IFFT FFT2D IFFT2D FFT3D IFFT3D RFFT IRFFT RFFT2D IRFFT2D
Cholesky MatrixInverse MatrixDeterminant LogMatrixDeterminant MatrixSolve
MatrixTriangularSolve Qr SelfAdjointEigV2 Svd Betainc Igamma Igammac Zeta Polygamma
Bincount DenseBincount SparseBincount RaggedBincount
"""
_NN = """
Relu Relu6 Elu Selu LeakyRelu Softplus Softsign Softmax LogSoftmax BiasAdd BiasAddV1
Conv2D Conv3D Conv DepthwiseConv2dNative Conv2DBackpropInput Conv3DBackpropInputV2
DepthwiseConv2dNativeBackpropInput MaxPool MaxPoolV2 MaxPool3D MaxPoolWithArgmax AvgPool
AvgPool3D FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 LRN Dilation2D ResizeBilinear
ResizeNearestNeighbor ResizeBicubic ResizeArea ScaleAndTranslate CropAndResize L2Loss
SoftmaxCrossEntropyWithLogits SparseSoftmaxCrossEntropyWithLogits InTopKV2 NthElement
FakeQuantWithMinMaxArgs FakeQuantWithMinMaxVars FakeQuantWithMinMaxVarsPerChannel
QuantizeAndDequantizeV2 QuantizeAndDequantizeV3 QuantizeAndDequantizeV4 RGBToHSV HSVToRGB
AdjustContrastv2 AdjustHue AdjustSaturation CudnnRNN CudnnRNNV2 CudnnRNNV3 CudnnRNNParamsSize
CudnnRNNParamsToCanonical CudnnRNNParamsToCanonicalV2 CudnnRNNCanonicalToParams
CudnnRNNCanonicalToParamsV2
"""
_RANDOM = """
RandomUniform RandomUniformInt RandomStandardNormal TruncatedNormal RandomShuffle
Multinomial StatelessRandomUniform StatelessRandomNormal StatelessTruncatedNormal
StatelessRandomUniformInt StatelessRandomUniformV2 StatelessRandomNormalV2
StatelessTruncatedNormalV2 StatelessRandomUniformIntV2 StatelessRandomUniformFullIntV2
StatelessRandomGetKeyCounter StatelessRandomGetAlg StatelessRandomGetKeyCounterAlg
StatelessMultinomial RngReadAndSkip RngSkip StatefulUniform StatefulUniformInt
StatefulStandardNormalV2 StatefulTruncatedNormal
"""
_STATE_AND_CONTROL = """
VarHandleOp ReadVariableOp AssignVariableOp AssignAddVariableOp AssignSubVariableOp
ResourceGather ResourceGatherNd VarIsInitializedOp DestroyResourceOp DisableCopyOnRead
VariableV2 Variable Assign AssignAdd AssignSub IsVariableInitialized
ResourceScatterUpdate ResourceScatterAdd ResourceStridedSliceAssign
PartitionedCall StatefulPartitionedCall If StatelessIf While StatelessWhile Case
StatelessCase Switch Merge Enter Exit NextIteration LoopCond ControlTrigger
TensorListReserve TensorListFromTensor TensorListGetItem TensorListSetItem
TensorListStack TensorListLength TensorListElementShape TensorListPushBack
TensorListPopBack EmptyTensorList TensorListConcatV2 TensorListSplit TensorListGather
TensorListScatterIntoExistingList TensorListResize TensorArrayV3 TensorArrayReadV3
TensorArrayWriteV3 TensorArrayGatherV3 TensorArrayScatterV3 TensorArraySizeV3
TensorArrayConcatV3 TensorArraySplitV3 TensorArrayCloseV3
HashTableV2 MutableHashTableV2 MutableHashTableOfTensorsV2 MutableDenseHashTableV2
LookupTableFindV2 LookupTableImportV2 LookupTableInsertV2 LookupTableSizeV2
LookupTableExportV2 LookupTableRemoveV2 InitializeTableV2
"""
# Text preprocessing layers (StringLookup, TextVectorization): string math, no I/O.
_STRINGS = """
StringJoin StringSplitV2 StringLower StringUpper Substr StringLength StringStrip
StaticRegexReplace StaticRegexFullMatch RegexReplace RegexFullMatch StringToNumber
AsString StringFormat StringToHashBucketFast StringToHashBucketStrong StringNGrams
ShardedFilename RaggedTensorToTensor RaggedTensorFromVariant RaggedTensorToVariant
RaggedRange RaggedGather UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode UnicodeTranscode
"""
PURE_OPS = frozenset(op for group in (_ARRAY, _MATH, _NN, _RANDOM, _STATE_AND_CONTROL,
                                      _STRINGS) for op in group.split())
# The saver's own checkpoint I/O (see the module docstring for where each may appear).
RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
SAVE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints"})

# What a node may run, by how it can be reached: from anything a user of the model runs,
# from the saver's restore op (run when TF1-style models load), from its save op only.
_EXPOSED, _RESTORE, _SAVE = 0, 1, 2
_ALLOWED = {_EXPOSED: PURE_OPS, _RESTORE: PURE_OPS | RESTORE_OPS,
            _SAVE: PURE_OPS | RESTORE_OPS | SAVE_OPS}


def read_saved_model(folder: str | Path):
    """Parse ``folder/saved_model.pb`` (the file TensorFlow's loader reads first).

    Raises:
        ValueError: the file is not a SavedModel protobuf.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((Path(folder) / "saved_model.pb").read_bytes())
    except DecodeError as exc:
        raise ValueError(f"saved_model.pb is not a SavedModel protobuf ({exc})") from exc
    return proto


def unsafe_ops(saved_model) -> list[tuple[str, str]]:
    """Every op outside the allow-list, as ``(op, where)``; ``where`` is a function name or
    ``graph`` (the top-level graph). Empty for a SavedModel of pure ops.

    Args:
        saved_model: a ``SavedModel`` protobuf (:func:`read_saved_model`).
    """
    found = []
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name: f for f in graph.library.function}
        node_level = _node_levels(graph.node, meta_graph.saver_def)
        function_level = _function_levels(graph.node, node_level, functions)
        for node in graph.node:
            if not _allowed(node.op, node_level[node.name], functions):
                found.append((node.op, "graph"))
        for name, function in functions.items():
            for node in function.node_def:
                if not _allowed(node.op, function_level[name], functions):
                    found.append((node.op, name))
    return list(dict.fromkeys(found))


def _allowed(op: str, level: int, functions: dict) -> bool:
    # A node whose op is a library function calls that function, which is checked itself.
    return op in _ALLOWED[level] or op in functions


def _node_levels(nodes, saver_def) -> dict[str, int]:
    """The level of each top-level node: saver-only nodes get the saver's allowance."""
    inputs = {n.name: [i.lstrip("^").split(":")[0] for i in n.input] for n in nodes}

    def ancestors(roots) -> set[str]:
        seen, todo = set(), [r for r in roots if r in inputs]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(i for i in inputs[name] if i in inputs)
        return seen

    restore = ancestors([saver_def.restore_op_name.lstrip("^").split(":")[0]])
    save = ancestors([saver_def.save_tensor_name.lstrip("^").split(":")[0]])
    # A node that anything else needs runs whenever that runs: it gets no allowance.
    exposed = ancestors([n for n in inputs if n not in restore and n not in save])
    return {n: _EXPOSED if n in exposed else _RESTORE if n in restore else _SAVE
            for n in inputs}


def _function_levels(nodes, node_level: dict, functions: dict) -> dict[str, int]:
    """The level of each library function: the strictest of every caller's. A function no
    node or function calls may still be called through the object graph: exposed."""
    calls = {name: _called(f.node_def, functions) for name, f in functions.items()}
    todo = [(f, node_level[n.name]) for n in nodes for f in _called([n], functions)]
    called = {f for f, _ in todo}.union(*calls.values())
    todo += [(f, _EXPOSED) for f in functions if f not in called]
    level: dict[str, int] = {}
    while todo:
        name, new = todo.pop()
        if name in level and level[name] <= new:
            continue
        level[name] = new
        todo.extend((callee, new) for callee in calls[name])
    return {name: level.get(name, _EXPOSED) for name in functions}


def _called(nodes, functions: dict) -> set[str]:
    """Library functions that ``nodes`` call: by op name or through ``func`` attributes."""
    out = set()
    for node in nodes:
        if node.op in functions:
            out.add(node.op)
        for value in node.attr.values():
            out |= _attr_functions(value)
    return out & set(functions)


def _attr_functions(value) -> set[str]:
    found = set()
    lists = [value.func] if value.HasField("func") else []
    if value.HasField("list"):
        lists += list(value.list.func)
    for item in lists:
        found.add(item.name)
        for inner in item.attr.values():
            found |= _attr_functions(inner)
    return found
