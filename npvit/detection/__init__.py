"""Object detection around the SSDLite models: the training loss (anchor matching, multibox
loss), COCO evaluation (mAP in NumPy), reading COCO-layout folders and drawing boxes.

The network itself, its anchors, box decoding, NMS and post-processing live with the model
(npvit.models.ssdlite, ssd_anchors, ssd_boxes), since they define what it outputs."""
