"""An encoder's transformer layers as one ONNX graph, run by ONNX Runtime.

The numpy encoders (`bert.BertEncoder`, `mpnet.MPNetEncoder`) spend nearly all their time in the
layers' matrix products, and numpy runs each product alone, through whatever BLAS it was built
with. ONNX Runtime runs the same layers as one graph with its own kernels: on the development
machine all-mpnet-base-v2 embeds a 44-token message in about two thirds of numpy's time, with the
same vectors (docs/pruning.md, "A larger embedder").

The graph is built here, in memory, from the encoder's own arrays: what goes in is the token
vectors after the embedding layer's norm and the additive attention bias (padding, and MPNet's
distance bias), both computed by the encoder as before; what comes out is the last layer's token
vectors, which the encoder pools. The weights are handed to ONNX Runtime as external initializers
that point at the encoder's arrays, so they are not serialized into the model or copied to disk.
The operators are ONNX's own (MatMul, Softmax, Erf for the exact gelu, LayerNormalization), so
the arithmetic is the numpy encoder's in float32, to rounding. With `int8` the matrix products
are ONNX's integer product instead (`MatMulInteger`), the rest as before: faster, and no longer
exact (all-mpnet-base-v2-int8, `halo_client.embedding`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

import numpy as np

if TYPE_CHECKING:
    from halo_client.embedding.bert import F32, BertEncoder

#: the operator set the graph is written against (LayerNormalization is in 17)
OPSET: Final = 17
#: the file format version ONNX Runtime 1.31 reads for that operator set
IR_VERSION: Final = 9


def available() -> bool:
    """Whether ONNX Runtime and onnx (the memory extra's) can be imported here."""
    try:
        importlib.import_module("onnx")
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


class OnnxLayers:
    """`(x [batch, tokens, hidden], bias) -> [batch, tokens, hidden]`: the encoder's layers.

    `bias` is added to every head's attention scores: `[batch, 1, 1, tokens]` (padding) or
    `[batch, heads, tokens, tokens]` (padding and distance); any shape that broadcasts to the
    scores' is taken.
    """

    def __init__(self, encoder: BertEncoder, int8: bool = False) -> None:
        onnx: Any = importlib.import_module("onnx")
        ort: Any = importlib.import_module("onnxruntime")
        c = encoder.config
        head_dim = c.hidden // c.heads
        helper, numpy_helper = onnx.helper, onnx.numpy_helper
        nodes: list[Any] = []
        constants: list[Any] = []
        weights: dict[str, F32] = {}

        def weight(name: str, array: F32) -> str:
            # declared in the graph as external data, supplied at session creation from `array`
            weights[name] = np.ascontiguousarray(array, np.float32)
            t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=array.shape,
                                 data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", "encoder-arrays"), ("offset", "0"), ("length", str(array.nbytes))):
                t.external_data.add(key=key, value=value)
            constants.append(t)
            return name

        def product(x: str, name: str, w: F32) -> str:
            """`x @ w`, in int8 if `int8`: `w` rounded per output column once, `x` per token at
            each call, both symmetric (`x` as uint8 around 128, the type ONNX Runtime's integer
            product takes on the left). Per token, not per call: the feed-forward layer's gelu
            outputs have a few large values, and one scale for a whole text rounded the rest away
            (the vectors' cosine to the exact ones fell to 0.65; per token it stays above 0.99)."""
            if not int8:
                return node("MatMul", [x, weight(name, w)])
            column_scale = np.maximum(np.abs(w).max(axis=0), np.float32(1e-12)) / np.float32(127.0)
            quantized = np.clip(np.rint(w / column_scale), -127, 127).astype(np.int8)
            row_scale = node("Max", [node("Div", [node("ReduceMax", [node("Abs", [x])], axes=[-1], keepdims=1),
                                                  levels]), tiny])
            x_int = node("Cast", [node("Add", [node("Round", [node("Div", [x, row_scale])]), middle])],
                         to=onnx.TensorProto.UINT8)
            integer = node("MatMulInteger", [x_int, const(name + ".int8", quantized), middle_u8,
                                             const(name + ".zero", np.zeros(w.shape[1], np.int8))])
            scaled = node("Mul", [node("Cast", [integer], to=onnx.TensorProto.FLOAT), row_scale])
            return node("Mul", [scaled, const(name + ".scale", column_scale.astype(np.float32))])

        def const(name: str, array: Any) -> str:
            constants.append(numpy_helper.from_array(np.asarray(array), name))
            return name

        def node(op: str, inputs: list[str], **attributes: Any) -> str:
            out = f"t{len(nodes)}"
            nodes.append(helper.make_node(op, inputs, [out], name=out, **attributes))
            return out

        heads_shape = const("heads_shape", np.array([0, 0, c.heads, head_dim], np.int64))
        flat_shape = const("flat_shape", np.array([0, 0, c.hidden], np.int64))
        thirds = const("thirds", np.array([c.hidden] * 3, np.int64))
        scale = const("scale", np.float32(1.0 / np.sqrt(head_dim)))
        half = const("half", np.float32(0.5))
        one = const("one", np.float32(1.0))
        root_half = const("root_half", np.float32(1.0 / np.sqrt(2.0)))
        if int8:
            levels, tiny = const("levels", np.float32(127.0)), const("tiny", np.float32(1e-12))
            middle, middle_u8 = const("middle", np.float32(128.0)), const("middle_u8", np.uint8(128))
        x = "x"
        for i, (qkv, qkv_b, wo, bo, n1w, n1b, w1, b1, w2, b2, n2w, n2b) in enumerate(encoder.layers):
            p = f"layer{i}."
            projected = node("Add", [product(x, p + "qkv", qkv), weight(p + "qkv_bias", qkv_b)])
            q, k, v = (f"{p}{n}" for n in "qkv")
            nodes.append(helper.make_node("Split", [projected, thirds], [q, k, v], name=p + "split", axis=-1))
            q = node("Transpose", [node("Reshape", [q, heads_shape])], perm=[0, 2, 1, 3])  # [b, heads, t, d]
            k = node("Transpose", [node("Reshape", [k, heads_shape])], perm=[0, 2, 3, 1])  # [b, heads, d, t]
            v = node("Transpose", [node("Reshape", [v, heads_shape])], perm=[0, 2, 1, 3])
            scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), "bias"])
            context = node("MatMul", [node("Softmax", [scores], axis=-1), v])
            context = node("Reshape", [node("Transpose", [context], perm=[0, 2, 1, 3]), flat_shape])
            attended = node("Add", [product(context, p + "wo", wo), weight(p + "bo", bo)])
            x = node("LayerNormalization", [node("Add", [x, attended]), weight(p + "n1w", n1w), weight(p + "n1b", n1b)],
                     epsilon=c.eps)
            h = node("Add", [product(x, p + "w1", w1), weight(p + "b1", b1)])
            gelu = node("Mul", [node("Mul", [h, half]), node("Add", [node("Erf", [node("Mul", [h, root_half])]), one])])
            fed = node("Add", [product(gelu, p + "w2", w2), weight(p + "b2", b2)])
            x = node("LayerNormalization", [node("Add", [x, fed]), weight(p + "n2w", n2w), weight(p + "n2b", n2b)],
                     epsilon=c.eps)
        float_ = onnx.TensorProto.FLOAT
        graph = helper.make_graph(
            nodes, "encoder_layers",
            [helper.make_tensor_value_info("x", float_, ["batch", "tokens", c.hidden]),
             helper.make_tensor_value_info("bias", float_, ["batch", "bias_heads", "bias_queries", "tokens"])],
            [helper.make_tensor_value_info(x, float_, ["batch", "tokens", c.hidden])], initializer=constants)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
        options = ort.SessionOptions()
        # idle worker threads do not spin: the recall step runs beside a model server, on the same cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = list(weights)
        options.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(weights[n]) for n in names])
        self._weights = weights  # ONNX Runtime reads these arrays in place: they live as long as the session
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._output = x

    def __call__(self, x: F32, bias: F32) -> F32:
        out: F32 = self._session.run([self._output], {"x": np.ascontiguousarray(x, np.float32),
                                                      "bias": np.ascontiguousarray(bias, np.float32)})[0]
        return out
