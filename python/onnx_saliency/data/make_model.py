"""Write text_direction_cls.onnx: PaddleOCR's text-direction classifier as shipped in the PyPI
package rapidocr-onnxruntime 1.4.4 (a test extra), its graph and weights unchanged, with the
metadata `onnx-saliency explain` reads (METADATA), so that `explain` on it reproduces `demo`.
Without rapidocr-onnxruntime installed, the bundled file's metadata is rewritten in place.

    python python/onnx_saliency/data/make_model.py
"""

import json
from pathlib import Path

import onnx

METADATA = {
    "onnx_saliency.size": [48, 192],            # [H, W]: the input's dims are symbolic
    "onnx_saliency.mean": [0.5, 0.5, 0.5],      # (pixel/255 - 0.5)/0.5, as PaddleOCR
    "onnx_saliency.std": [0.5, 0.5, 0.5],
    "onnx_saliency.labels": ["0", "180"],       # the text's rotation in degrees
    "onnx_saliency.resize": "squash",   # as PaddleOCR for lines wider than 4:1 (it resizes to
                                        # height 48, width at most 192; narrower ones it pads right)
}


def source() -> Path:
    try:
        import rapidocr_onnxruntime
    except ImportError:
        return Path(__file__).with_name("text_direction_cls.onnx")
    return Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def main(path: Path = Path(__file__).with_name("text_direction_cls.onnx")) -> None:
    model = onnx.load(source())
    kept = [p for p in model.metadata_props if p.key not in METADATA]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in METADATA.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
